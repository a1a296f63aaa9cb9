"""OpenAI Responses API, stateless: POST /v1/responses (spec §1, Ollama's openai/responses.go).

Translates `input` (a string or message / function_call / function_call_output / reasoning
items), `instructions`, `tools` (functions, `namespace` groups and `custom` tools; hosted tools
such as `web_search` are left out and reported, see `responses_tools`), `text.format`,
`reasoning.effort` and the sampling fields into a native chat request, calls `chat_events`, and
converts the native chunks into a `response` object or the streamed event sequence
(`response.created`, `response.in_progress`,
`response.output_item.added/done`, `response.content_part.added/done`,
`response.output_text.delta/done`, `response.reasoning_summary_text.delta/done`,
`response.function_call_arguments.delta/done`, `response.completed` / `response.failed`).
`previous_response_id` and `conversation` are rejected (nothing is stored). No inference here.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from corral.errors import BadRequestError, CorralError
from corral.schemas.native import ChatRequest, ChatResponse, Message, ToolCall, ToolCallFunction
from corral.schemas.openai import ResponsesRequest, log_ignored_fields
from corral.server.compat.openai import CTX_FIELDS, content_parts, extra_options, ignore_eos, think_value
from corral.server.compat.openai_stream import Native, sse_response
from corral.server.compat.responses_tools import IGNORED_TOOLS_KEY, ToolPlan, call_item, flat_name, plan_tools
from corral.server.context import Ctx
from corral.server.errors import responses_error
from corral.server.framing import sse_event
from corral.server.native.inference import chat_events
from corral.server.stream import until_disconnected

router = APIRouter()
log = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# Request translation ----------------------------------------------------------------------------
def item_content(content: Any) -> tuple[str, list[str]]:
    """Response input content (string or input_text/output_text/input_image parts) -> text, images."""
    if content is None or isinstance(content, str):
        return content or "", []
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": part.get("image_url") or ""})
        else:
            raise BadRequestError(f"unsupported input content type: {kind}")
    return content_parts(parts)


def call_arguments(text: Any) -> Any:
    try:
        return json.loads(text or "{}") if isinstance(text, str | None) else text
    except ValueError:
        raise BadRequestError(f"invalid function_call arguments: {text}") from None


def input_messages(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message(role="user", content=value)]
    if not isinstance(value, list):
        raise BadRequestError("input must be a string or a list of items")
    out: list[Message] = []
    last_role: Any = None  # the role of out[-1] as the input spelled it
    thinking = ""
    for item in value:
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            text, images = item_content(item.get("content"))
            last_role = item.get("role", "user")
            msg = Message(role=last_role, content=text, images=images or None)
            if thinking and last_role == "assistant":
                msg.thinking, thinking = thinking, ""
            out.append(msg)
        elif kind in ("function_call", "custom_tool_call"):
            args = call_arguments(item.get("arguments")) if kind == "function_call" else {"input": item.get("input")}
            name = flat_name(item.get("namespace"), item.get("name", ""))
            call = ToolCall(id=item.get("call_id"), function=ToolCallFunction(name=name, arguments=args))
            if not out or last_role != "assistant":
                out.append(Message(role="assistant"))
                last_role = "assistant"
            out[-1].tool_calls = [*(out[-1].tool_calls or []), call]
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            last_role = "tool"
            out.append(Message(role="tool", tool_call_id=item.get("call_id"),
                               content=output if isinstance(output, str) else json.dumps(output)))
        elif kind == "reasoning":
            thinking = "".join(s.get("text", "") for s in item.get("summary") or [])
        else:
            raise BadRequestError(f"unsupported input item type: {kind}")
    return out


def native_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Function, namespace and custom tools as native function tools (hosted tools left out)."""
    return plan_tools(tools).native or None


def text_format(text: dict[str, Any] | None) -> Any:
    fmt = (text or {}).get("format") or {}
    kind = fmt.get("type")
    if kind == "json_schema":
        return fmt.get("schema") or {}
    if kind == "json_object":
        return "json"
    return None


def to_chat_request(req: ResponsesRequest) -> ChatRequest:
    if req.previous_response_id or req.conversation:
        raise BadRequestError("previous_response_id and conversation are not supported: corral's /v1/responses "
                              "is stateless, send the whole conversation in 'input'")
    messages = input_messages(req.input)
    if req.instructions:
        messages.insert(0, Message(role="system", content=req.instructions))
    options = extra_options(req.extras())
    for key, value in (("temperature", req.temperature), ("top_p", req.top_p),
                       ("num_predict", req.max_output_tokens)):
        if value is not None:
            options[key] = value
    return ChatRequest.model_validate({
        "model": req.model, "messages": messages, "stream": True, "options": options,
        "tools": native_tools(req.tools), "tool_choice": req.tool_choice, "format": text_format(req.text),
        "think": think_value(req.reasoning.effort if req.reasoning else None), "ignore_eos": ignore_eos(req),
    })


# Response conversion ------------------------------------------------------------------------------
class ResponseBuilder:
    """Accumulates output items from native chunks and emits the streaming events on the way."""

    def __init__(self, req: ResponsesRequest) -> None:
        self.req = req
        self.id = new_id("resp")
        self.created = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None
        self.seq = 0
        self.usage: dict[str, Any] | None = None
        self.done_reason: str | None = None
        self.tools: ToolPlan = plan_tools(req.tools)

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse_event(kind, data)

    def response(self, status: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status, "model": self.req.model,
            "output": self.output, "parallel_tool_calls": True, "tool_choice": self.req.tool_choice or "auto",
            "tools": self.req.tools or [], "instructions": self.req.instructions, "error": None,
            "incomplete_details": None, "temperature": self.req.temperature, "top_p": self.req.top_p,
            "max_output_tokens": self.req.max_output_tokens, "usage": self.usage, "metadata": self.metadata(),
        }
        if status == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        return body

    def metadata(self) -> dict[str, Any]:
        out = dict(self.req.metadata or {})
        if self.tools.ignored:
            out[IGNORED_TOOLS_KEY] = ",".join(sorted(set(self.tools.ignored)))
        return out

    def close(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        idx = self.output.index(item)
        out = []
        if item["type"] == "message":
            part = item["content"][0]
            out.append(self.event("response.output_text.done", item_id=item["id"], output_index=idx,
                                  content_index=0, text=part["text"], logprobs=[]))
            out.append(self.event("response.content_part.done", item_id=item["id"], output_index=idx,
                                  content_index=0, part=part))
        elif item["type"] == "reasoning":
            text = item["summary"][0]["text"]
            out.append(self.event("response.reasoning_summary_text.done", item_id=item["id"], output_index=idx,
                                  summary_index=0, text=text))
        item["status"] = "completed"
        out.append(self.event("response.output_item.done", output_index=idx, item=item))
        return out

    def open_item(self, kind: str) -> list[bytes]:
        out = self.close()
        item: dict[str, Any]
        if kind == "message":
            item = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                    "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]}
        else:
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": ""}]}
        self.output.append(item)
        self.open = item
        idx = len(self.output) - 1
        empty = "content" if kind == "message" else "summary"
        out.append(self.event("response.output_item.added", output_index=idx, item={**item, empty: []}))
        if kind == "message":
            out.append(self.event("response.content_part.added", item_id=item["id"], output_index=idx,
                                  content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        return out

    def append(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != kind:
            out += self.open_item(kind)
        item = self.open
        assert item is not None
        idx = len(self.output) - 1
        if kind == "message":
            item["content"][0]["text"] += text
            out.append(self.event("response.output_text.delta", item_id=item["id"], output_index=idx,
                                  content_index=0, delta=text, logprobs=[]))
        else:
            item["summary"][0]["text"] += text
            out.append(self.event("response.reasoning_summary_text.delta", item_id=item["id"], output_index=idx,
                                  summary_index=0, delta=text))
        return out

    def tool_call(self, call: ToolCall) -> list[bytes]:
        out = self.close()
        fn = call.function
        args = json.dumps(fn.arguments or {}, ensure_ascii=False)
        route = self.tools.route(fn.name)
        item = call_item(route, call.id or new_id("call"), fn.arguments or {}, new_id("fc"))
        self.output.append(item)
        idx = len(self.output) - 1
        if item["type"] == "custom_tool_call":
            added = {**item, "status": "in_progress"}
            out.append(self.event("response.output_item.added", output_index=idx, item=added))
            out.append(self.event("response.output_item.done", output_index=idx, item=item))
            return out
        out.append(self.event("response.output_item.added", output_index=idx, item=dict(item)))
        out.append(self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=idx,
                              delta=args))
        item["arguments"] = args
        out.append(self.event("response.function_call_arguments.done", item_id=item["id"], output_index=idx,
                              arguments=args))
        item["status"] = "completed"
        out.append(self.event("response.output_item.done", output_index=idx, item=item))
        return out

    def convert(self, chunk: ChatResponse) -> list[bytes]:
        msg = chunk.message
        out: list[bytes] = []
        if msg.thinking:
            out += self.append("reasoning", msg.thinking)
        if msg.content:
            out += self.append("message", msg.content)
        for call in msg.tool_calls or []:
            out += self.tool_call(call)
        if chunk.done:
            out += self.close()
            self.finish(chunk)
        return out

    def finish(self, chunk: ChatResponse) -> None:
        prompt, completion = chunk.prompt_eval_count or 0, chunk.eval_count or 0
        self.usage = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
                      "input_tokens_details": {"cached_tokens": chunk.prompt_cache_count or 0,
                                               "cache_write_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}
        self.done_reason = chunk.done_reason

    def final_status(self) -> str:
        return "incomplete" if self.done_reason == "length" else "completed"


async def response_frames(items: Native, rb: ResponseBuilder) -> AsyncIterator[bytes]:
    # Read the first native chunk before `response.created`: an error raised before any output
    # (a prompt larger than the context, an unknown model) then keeps its HTTP status.
    first = await anext(items, None)
    yield rb.event("response.created", response=rb.response("in_progress"))
    yield rb.event("response.in_progress", response=rb.response("in_progress"))
    try:
        if first is not None:
            for frame in rb.convert(first):
                yield frame
        async for chunk in items:
            for frame in rb.convert(chunk):
                yield frame
    except CorralError as exc:
        failed = rb.response("failed")
        failed["error"] = responses_error(exc)
        yield rb.event("response.failed", response=failed)
        return
    final = rb.final_status()
    yield rb.event("response.completed" if final == "completed" else "response.incomplete",
                   response=rb.response(final))


async def collect_response(items: Native, rb: ResponseBuilder) -> dict[str, Any]:
    async for chunk in items:
        rb.convert(chunk)
    return rb.response(rb.final_status())


@router.post("/v1/responses")
async def responses(req: ResponsesRequest, ctx: Ctx, request: Request) -> Response:
    log_ignored_fields("/v1/responses", req, CTX_FIELDS)
    ignored = plan_tools(req.tools).ignored
    if ignored:
        log.warning("/v1/responses: leaving out hosted tools corral cannot run: %s", ", ".join(sorted(set(ignored))))
    items = await chat_events(ctx, to_chat_request(req))
    rb = ResponseBuilder(req)
    if not req.stream:
        return JSONResponse(await until_disconnected(request, collect_response(items, rb)))
    return await sse_response(response_frames(items, rb), lambda err: rb.event("error", **responses_error(err)))

"""Anthropic-compatible Messages API: POST /v1/messages (spec §1, Ollama's anthropic/anthropic.go).

Translates a Messages request (system, text, base64 images, tool_use / tool_result / thinking
blocks, tools, stop_sequences, thinking, output_config.effort) into a native chat request, calls
`chat_events`, and converts the native chunks back into a message object or the Anthropic SSE
event sequence (`message_start`, `content_block_*`, `message_delta`, `message_stop`). Its error
body lives in `corral.server.errors`. No inference logic lives here. Beyond Ollama, `tool_choice`
is honoured (mapped to corral's native `tool_choice`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from corral.errors import BadRequestError
from corral.schemas.anthropic import AnthropicMessage, MessagesRequest
from corral.schemas.native import ChatRequest, ChatResponse, Message, ToolCall, ToolCallFunction
from corral.schemas.openai import log_ignored_fields
from corral.server.compat.openai_stream import Native, sse_response
from corral.server.context import Ctx
from corral.server.errors import anthropic_stream_error
from corral.server.framing import sse_event
from corral.server.native.inference import chat_events
from corral.server.stream import until_disconnected

router = APIRouter()
EFFORTS = ("low", "medium", "high", "max")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# Request translation ----------------------------------------------------------------------------
def image_block(block: dict[str, Any]) -> str:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequestError("invalid image source")
    if source.get("type") != "base64":
        raise BadRequestError(f"invalid image source type: {source.get('type')}. Only base64 images are supported.")
    data = str(source.get("data", ""))
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"invalid base64 image data: {exc}") from None
    return data


def tool_result(block: dict[str, Any]) -> Message:
    content = block.get("content")
    text, images = "", []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text":
                parts.append(str(item.get("text", "")))
            elif isinstance(item, dict) and item.get("type") == "image":
                images.append(image_block(item))
        text = "".join(parts)
    return Message(role="tool", content=text, tool_call_id=block.get("tool_use_id"), images=images or None)


def convert_message(msg: AnthropicMessage) -> list[Message]:
    role = msg.role.lower()
    text: list[str] = []
    images: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    thinking = ""
    for block in msg.blocks():
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "image":
            images.append(image_block(block))
        elif kind == "tool_use":
            for key in ("id", "name"):
                if not block.get(key):
                    raise BadRequestError(f"tool_use block missing required '{key}' field")
            fn = ToolCallFunction(name=block["name"], arguments=block.get("input") or {})
            calls.append(ToolCall(id=block["id"], function=fn))
        elif kind == "tool_result":
            results.append(tool_result(block))
        elif kind == "thinking":
            thinking = str(block.get("thinking") or "")
    out: list[Message] = results if role == "user" else []
    if text or images or calls or thinking:
        out.append(Message(role=role, content="".join(text), images=images or None, tool_calls=calls or None,
                           thinking=thinking or None))
    if role != "user":
        out.extend(results)
    return out


def system_text(system: str | list[dict[str, Any]] | None) -> str:
    if isinstance(system, str):
        return system
    return "".join(str(b.get("text", "")) for b in system or [] if b.get("type") == "text")


def think_of(req: MessagesRequest) -> bool | str | None:
    if req.thinking is not None and req.thinking.type in ("enabled", "disabled"):
        return req.thinking.type == "enabled"
    effort = (req.output_config.effort or "").strip().lower() if req.output_config else ""
    effort = "high" if effort == "xhigh" else effort
    return effort if effort in EFFORTS else None


def native_tool_choice(choice: dict[str, Any] | None) -> Any:
    if not choice:
        return None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return {"any": "required", "auto": "auto", "none": "none"}.get(str(kind))


def to_chat_request(req: MessagesRequest) -> ChatRequest:
    messages: list[Message] = []
    sys = system_text(req.system)
    if sys:
        messages.append(Message(role="system", content=sys))
    for m in req.messages:
        messages.extend(convert_message(m))
    options: dict[str, Any] = {"num_predict": req.max_tokens}
    for key in ("temperature", "top_p", "top_k"):
        if getattr(req, key) is not None:
            options[key] = getattr(req, key)
    if req.stop_sequences:
        options["stop"] = req.stop_sequences
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                               "parameters": t.input_schema or {}}} for t in req.tools or []]
    return ChatRequest.model_validate({
        "model": req.model, "messages": messages, "options": options, "stream": True, "tools": tools or None,
        "tool_choice": native_tool_choice(req.tool_choice), "think": think_of(req),
        "ignore_eos": bool(req.extras().get("ignore_eos", False)),
    })


# Response conversion ------------------------------------------------------------------------------
def stop_reason(done_reason: str | None, tool_calls: bool) -> str | None:
    if tool_calls:
        return "tool_use"
    if done_reason == "stop":
        return "end_turn"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if done_reason else None


def usage_of(final: ChatResponse | None) -> dict[str, Any]:
    """Anthropic's `usage`: `cache_read_input_tokens` are the prompt tokens served from the KV or
    prompt cache (the native `prompt_cache_count`); `input_tokens` stays the whole prompt, as Ollama's."""
    if final is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {"input_tokens": final.prompt_eval_count or 0, "output_tokens": final.eval_count or 0,
            "cache_read_input_tokens": final.prompt_cache_count or 0}


async def collect(mid: str, model: str, items: Native) -> dict[str, Any]:
    text: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    last: ChatResponse | None = None
    async for item in items:
        msg = item.message
        text.append(msg.content)
        thinking.append(msg.thinking or "")
        calls.extend(msg.tool_calls or [])
        last = item
    content: list[dict[str, Any]] = []
    if "".join(thinking):
        content.append({"type": "thinking", "thinking": "".join(thinking), "signature": ""})
    if "".join(text):
        content.append({"type": "text", "text": "".join(text)})
    for c in calls:
        content.append({"type": "tool_use", "id": c.id or new_id("toolu"), "name": c.function.name,
                        "input": c.function.arguments or {}})
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason(last.done_reason if last else None, bool(calls)), "stop_sequence": None,
            "usage": usage_of(last)}


class EventStream:
    """Native chat chunks -> Anthropic stream events (one open content block at a time)."""

    def __init__(self, mid: str, model: str, estimated_input: int = 0) -> None:
        self.mid, self.model, self.estimated_input = mid, model, estimated_input
        self.index = -1
        self.open: str | None = None
        self.tools_sent = 0

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.mid, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.estimated_input, "output_tokens": 0}}
        return sse_event("message_start", {"type": "message_start", "message": message})

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def block(self, kind: str, block: dict[str, Any], delta: dict[str, Any]) -> list[bytes]:
        out = []
        if self.open != kind:
            out.extend(self.close())
            self.index += 1
            self.open = kind
            out.append(sse_event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                         "content_block": block}))
        out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                     "delta": delta}))
        return out

    def convert(self, item: ChatResponse) -> list[bytes]:
        msg = item.message
        out: list[bytes] = []
        if msg.thinking:
            out += self.block("thinking", {"type": "thinking", "thinking": "", "signature": ""},
                              {"type": "thinking_delta", "thinking": msg.thinking})
        if msg.content:
            out += self.block("text", {"type": "text", "text": ""}, {"type": "text_delta", "text": msg.content})
        for call in msg.tool_calls or []:
            out += self.close()
            fn = call.function
            block = {"type": "tool_use", "id": call.id or new_id("toolu"), "name": fn.name, "input": {}}
            out += self.block("tool_use", block, {"type": "input_json_delta",
                                                  "partial_json": json.dumps(fn.arguments or {})})
            out += self.close()
            self.tools_sent += 1
        if item.done:
            out += self.close()
            delta = {"stop_reason": stop_reason(item.done_reason, self.tools_sent > 0), "stop_sequence": None}
            out.append(sse_event("message_delta", {"type": "message_delta", "delta": delta,
                                                   "usage": usage_of(item)}))
            out.append(sse_event("message_stop", {"type": "message_stop"}))
        return out


def estimate_input_tokens(req: MessagesRequest) -> int:
    """Ollama's rough len/4 estimate, shown in `message_start` before the prompt is evaluated."""
    text = system_text(req.system) + "".join(m.role + json.dumps(m.content) for m in req.messages)
    text += "".join(t.name + (t.description or "") + json.dumps(t.input_schema or {}) for t in req.tools or [])
    return max(len(text) // 4, 1)


FIRST_CHUNK_WAIT = 30.0
"""Seconds `message_start` waits for the first chunk: an error before it (an unknown model, a prompt
larger than the context) keeps its HTTP status."""
PING_EVERY = 15.0
"""Then `ping` events until the first chunk: a long prompt evaluation must not look like a dead
stream to clients that watch for idle ones (Claude Code gives up after 5 minutes without events)."""


async def first_chunk(items: Native, events: EventStream) -> AsyncIterator[bytes | ChatResponse | None]:
    """Frames to send while waiting (`message_start`, pings), then the first chunk (or None)."""
    task = asyncio.ensure_future(anext(items, None))
    try:
        started = False
        while not (await asyncio.wait({task}, timeout=PING_EVERY if started else FIRST_CHUNK_WAIT))[0]:
            if not started:
                yield events.start()
                started = True
            yield sse_event("ping", {"type": "ping"})
        yield task.result()
    finally:
        task.cancel()


async def event_frames(items: Native, events: EventStream) -> AsyncIterator[bytes]:
    started = False
    first: ChatResponse | None = None
    async for got in first_chunk(items, events):
        if isinstance(got, bytes):
            started = True
            yield got
        else:
            first = got
    if not started:
        yield events.start()
    if first is not None:
        for frame in events.convert(first):
            yield frame
    async for item in items:
        for frame in events.convert(item):
            yield frame


@router.post("/v1/messages")
async def messages(req: MessagesRequest, ctx: Ctx, request: Request) -> Response:
    log_ignored_fields("/v1/messages", req, frozenset({"ignore_eos"}))
    if not req.messages:
        raise BadRequestError("messages: at least one message is required")
    if req.max_tokens <= 0:
        raise BadRequestError("max_tokens is required and must be positive")
    native = to_chat_request(req)
    try:
        items = await chat_events(ctx, native)
    except BadRequestError as exc:
        # Ollama relaxes thinking for models without it (`relax_thinking`) instead of failing
        if not native.think or "does not support thinking" not in exc.message:
            raise
        items = await chat_events(ctx, native.model_copy(update={"think": None}))
    mid = new_id("msg")
    if not req.stream:
        return JSONResponse(await until_disconnected(request, collect(mid, req.model, items)))
    events = EventStream(mid, req.model, estimate_input_tokens(req))
    return await sse_response(event_frames(items, events), anthropic_stream_error)

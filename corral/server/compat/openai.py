"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Each handler translates the OpenAI request into a native request, calls the native service
function (`start_chat`, `generate_events`, `embed_response`) and converts the typed result back (spec
§1 "OpenAI compatibility"); no inference logic lives here. Beyond Ollama: `n` > 1 (n native
streams run concurrently, so they batch in the runner), `tool_choice`, and a per-request context
size (`num_ctx` as an extra body field or inside an extra `options` object).
`corral.server.app` wires this router (and the Responses and Anthropic ones).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from corral.errors import BadRequestError, ModelNotFoundError
from corral.names import ModelName
from corral.schemas.native import (
    ChatRequest,
    DebugResponse,
    EmbedRequest,
    GenerateRequest,
    Message,
    TokenLogprob,
    ToolCall,
    ToolCallFunction,
)
from corral.schemas.openai import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIModel,
    log_ignored_fields,
)
from corral.server.compat.openai_stream import (
    FINGERPRINT,
    ChatChunker,
    Native,
    chat_completion,
    chat_sse,
    short_id,
    sse_response,
    usage_of,
)
from corral.server.context import AppContext, Ctx
from corral.server.errors import openai_stream_error
from corral.server.framing import sse_data
from corral.server.native.adapters import LORA_FIELDS, lora_field
from corral.server.native.embeddings import embed_response
from corral.server.native.inference import GenerateEvents, generate_events, start_chat
from corral.server.stream import until_disconnected

router = APIRouter()
EFFORTS: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                   "high": "high", "max": "max", "xhigh": "max", "ultra": "max"}
_DATA_URI = re.compile(r"^data:(?:image/(?:jpeg|jpg|png|webp))?;base64,(.*)$", re.DOTALL)
MAX_N = 16
CTX_FIELDS = frozenset({"num_ctx", "options", "ignore_eos"})


# Request translation ----------------------------------------------------------------------------
def think_value(effort: str | None) -> bool | str | None:
    """Spec effort map: none -> no thinking, minimal -> low, xhigh/ultra -> max, others as is."""
    if effort is None:
        return None
    if effort not in EFFORTS:
        raise BadRequestError(f"invalid reasoning value: '{effort}' (must be one of {', '.join(EFFORTS)})")
    return EFFORTS[effort]


def extra_options(extras: dict[str, Any]) -> dict[str, Any]:
    """Native options carried as extra body fields: `options` (object) and top-level `num_ctx`."""
    opts = extras.get("options")
    if opts is not None and not isinstance(opts, dict):
        raise BadRequestError("options must be an object")
    out = dict(opts or {})
    if extras.get("num_ctx") is not None:
        out["num_ctx"] = extras["num_ctx"]
    return out


def sampling_options(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> dict[str, Any]:
    opts = extra_options(req.extras())
    if max_tokens is not None:
        opts["num_predict"] = max_tokens
    if req.stop is not None:
        opts["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        value = getattr(req, key)
        if value is not None:
            opts[key] = value
    # Ollama forces 1.0 when absent (overriding the model's defaults), unless `options` sets them.
    opts["temperature"] = req.temperature if req.temperature is not None else opts.get("temperature", 1.0)
    opts["top_p"] = req.top_p if req.top_p is not None else opts.get("top_p", 1.0)
    return opts


def image_data(part: dict[str, Any]) -> str:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str):
        raise BadRequestError("invalid image input")
    if url.startswith(("http://", "https://")):
        raise BadRequestError("image URLs are not currently supported, please use base64 encoded data instead")
    match = _DATA_URI.match(url)
    if match is None:
        raise BadRequestError("invalid image input")
    try:
        base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("invalid image input") from None
    return match.group(1)


def content_parts(content: Any) -> tuple[str, list[str]]:
    """OpenAI message content (string or parts) -> (text, base64 images)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise BadRequestError(f"invalid message content type: {type(content).__name__}")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            images.append(image_data(part))
        elif kind == "input_audio":
            images.append(str((part.get("input_audio") or {}).get("data", "")))
        else:
            raise BadRequestError(f"invalid message part type: {kind}")
    return "\n".join(texts), images


def native_tool_calls(calls: list[dict[str, Any]]) -> list[ToolCall]:
    import json

    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise BadRequestError(f"invalid tool call arguments: {args}") from None
        out.append(ToolCall(id=call.get("id"), function=ToolCallFunction(name=fn.get("name", ""), arguments=parsed)))
    return out


def native_messages(messages: list[ChatMessage]) -> list[Message]:
    if not messages:
        raise BadRequestError("[] is too short - 'messages'")
    names: dict[str, str] = {}
    out: list[Message] = []
    for m in messages:
        text, images = content_parts(m.content)
        calls = native_tool_calls(m.tool_calls) if m.tool_calls else None
        names.update({c.id: c.function.name for c in calls or [] if c.id})
        tool = m.role == "tool"
        # OpenAI's newer "developer" role is the system prompt for every template we render
        out.append(Message(role="system" if m.role == "developer" else m.role, content=text, images=images or None,
                           thinking=m.reasoning or m.reasoning_content or None, tool_calls=calls,
                           tool_call_id=m.tool_call_id if tool else None,
                           tool_name=(m.name or names.get(m.tool_call_id or "") or None) if tool else None))
    return out


def response_format(fmt: dict[str, Any] | None) -> Any:
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequestError("response_format json_schema requires a 'schema' object")
        return schema
    if kind in (None, "text"):
        return None
    raise BadRequestError(f"invalid response_format type: {kind}")


def to_chat_request(req: ChatCompletionRequest) -> ChatRequest:
    effort = req.reasoning_effort or (req.reasoning.effort if req.reasoning else None)
    top = req.top_logprobs or 0
    return ChatRequest.model_validate({
        "model": req.model,
        "messages": native_messages(req.messages),
        "stream": True,
        "format": response_format(req.response_format),
        "tools": req.tools,
        "tool_choice": req.tool_choice,
        "options": sampling_options(req, req.max_completion_tokens or req.max_tokens),
        "think": think_value(effort),
        "logprobs": bool(req.logprobs) or top > 0,
        "top_logprobs": top,
        "_debug_render_only": req.debug_render_only,
        "ignore_eos": ignore_eos(req),
        **lora_field(req.extras()),
    })


def copies(native: ChatRequest, n: int) -> list[ChatRequest]:
    """n native requests; with a seed, each copy gets seed+i so the choices differ."""
    if n < 1 or n > MAX_N:
        raise BadRequestError(f"n must be between 1 and {MAX_N}")
    out = [native]
    for i in range(1, n):
        opts = dict(native.options or {})
        if "seed" in opts:
            opts["seed"] = int(opts["seed"]) + i
        out.append(native.model_copy(update={"options": opts}))
    return out


# Routes ------------------------------------------------------------------------------------------
@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, ctx: Ctx, request: Request) -> Response:
    log_ignored_fields("/v1/chat/completions", req, CTX_FIELDS | LORA_FIELDS)
    native = to_chat_request(req)
    started = [await start_chat(ctx, r) for r in copies(native, req.n or 1)]
    if isinstance(started[0], DebugResponse):
        return JSONResponse(started[0].dump())
    streams: list[Native] = [s for s in started if not isinstance(s, DebugResponse)]
    want_lp = native.logprobs
    if not req.stream:
        return JSONResponse(await until_disconnected(request, chat_completion(streams, req.model,
                                                                              want_logprobs=want_lp)))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    chunker = ChatChunker(req.model, len(streams), include_usage=include_usage, want_logprobs=want_lp)
    return await sse_response(chat_sse(streams, chunker), openai_stream_error)


def completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    raise BadRequestError(f"invalid type for 'prompt' field: {type(prompt).__name__} "
                          "(only a single string prompt is supported)")


def to_generate_request(req: CompletionRequest) -> GenerateRequest:
    if req.echo:
        raise BadRequestError("'echo' is not supported: corral does not return the prompt with the completion")
    if (req.n or 1) != 1 or (req.best_of or 1) != 1:
        raise BadRequestError("'n' and 'best_of' are not supported on /v1/completions; use /v1/chat/completions")
    top = req.logprobs or 0
    return GenerateRequest.model_validate({
        "model": req.model, "prompt": completion_prompt(req.prompt), "suffix": req.suffix, "stream": True,
        "options": sampling_options(req, req.max_tokens), "logprobs": req.logprobs is not None,
        "top_logprobs": top, "ignore_eos": ignore_eos(req), **lora_field(req.extras()),
    })


def ignore_eos(req: OpenAIModel) -> bool:
    """llama.cpp's `ignore_eos` extension, as a top-level body field on every /v1 route."""
    return bool(req.extras().get("ignore_eos", False))


def legacy_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    offsets, pos = [], 0
    for lp in items:
        offsets.append(pos)
        pos += len(lp.token)
    return {"tokens": [lp.token for lp in items], "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [{t.token: t.logprob for t in lp.top_logprobs or []} for lp in items],
            "text_offset": offsets}


def completion_object(cid: str, created: int, model: str, text: str, reason: str | None,
                      logprobs: list[TokenLogprob] | None) -> dict[str, Any]:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"text": text, "index": 0, "finish_reason": reason,
                         "logprobs": legacy_logprobs(logprobs) if logprobs is not None else None}]}


@router.post("/v1/completions")
async def completions(req: CompletionRequest, ctx: Ctx, request: Request) -> Response:
    log_ignored_fields("/v1/completions", req, CTX_FIELDS | LORA_FIELDS)
    native = to_generate_request(req)
    items = await generate_events(ctx, native)
    cid, created, want_lp = short_id("cmpl"), int(time.time()), native.logprobs
    if not req.stream:
        body = await until_disconnected(request, collect_completion(items, cid, created, req.model, want_lp))
        return JSONResponse(body)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    frames = completion_sse(items, cid, created, req.model, want_lp, include_usage)
    return await sse_response(frames, openai_stream_error)


async def collect_completion(items: GenerateEvents, cid: str, created: int, model: str, want_lp: bool
                             ) -> dict[str, Any]:
    text: list[str] = []
    lps: list[TokenLogprob] = []
    done_reason: str | None = None
    usage = usage_of(0, 0)
    async for item in items:
        text.append(item.response)
        lps.extend(item.logprobs or [])
        if item.done:
            done_reason = item.done_reason
            usage = usage_of(item.prompt_eval_count or 0, item.eval_count or 0, item.prompt_cache_count or 0)
    reason = "length" if done_reason == "length" else "stop"
    body = completion_object(cid, created, model, "".join(text), reason, lps if want_lp else None)
    body["usage"] = usage
    return body


async def completion_sse(items: GenerateEvents, cid: str, created: int, model: str, want_lp: bool,
                         include_usage: bool) -> AsyncIterator[bytes]:
    async for item in items:
        reason = None
        if item.done:
            reason = "length" if item.done_reason == "length" else "stop"
        lps = item.logprobs or [] if want_lp else None
        if item.response or reason or lps:
            yield sse_data(completion_object(cid, created, model, item.response, reason, lps))
        if item.done and include_usage:
            usage = usage_of(item.prompt_eval_count or 0, item.eval_count or 0, item.prompt_cache_count or 0)
            yield sse_data({"id": cid, "object": "text_completion", "created": created, "model": model,
                            "system_fingerprint": FINGERPRINT, "choices": [], "usage": usage})
    yield sse_data("[DONE]")


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, ctx: Ctx, request: Request) -> JSONResponse:
    log_ignored_fields("/v1/embeddings", req, CTX_FIELDS)
    encoding = req.encoding_format or "float"
    if encoding not in ("float", "base64"):
        raise BadRequestError(f"Invalid value for 'encoding_format' = {encoding}. "
                              "Supported values: ['float', 'base64'].")
    if req.input is None or req.input == "" or req.input == []:
        raise BadRequestError("invalid input")
    native = EmbedRequest(model=req.model, input=req.input, dimensions=req.dimensions,
                          options=extra_options(req.extras()) or None)
    result = await until_disconnected(request, embed_response(ctx, native))
    data = []
    for i, vec in enumerate(result.embeddings):
        value: Any = vec
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "embedding": value, "index": i})
    tokens = result.prompt_eval_count or 0
    return JSONResponse({"object": "list", "data": data, "model": req.model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def model_object(name: str, modified: Any, namespace: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(modified.timestamp()), "owned_by": namespace}


@router.get("/v1/models")
async def list_models(ctx: Ctx) -> JSONResponse:
    entries = await run_in_threadpool(ctx.store.list_models)
    data = [model_object(e.name.display_shortest(), e.modified_at, e.name.namespace) for e in entries]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, ctx: Ctx) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(find_model, ctx, model))


def find_model(ctx: AppContext, text: str) -> dict[str, Any]:
    name = ModelName.try_parse(text)
    if name is None:
        raise ModelNotFoundError(text, f"model '{text}' not found")
    try:
        stored = ctx.store.load_model(ctx.store.resolve(name))
    except ModelNotFoundError:
        raise ModelNotFoundError(text, f"model '{text}' not found") from None
    return model_object(text, stored.modified_at, stored.name.namespace)


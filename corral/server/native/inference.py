"""Native inference routes: /api/generate, /api/chat (spec §1).

Each handler validates, resolves a `Job`, renders the prompt and streams the runner's chunks as
Ollama's NDJSON (or one JSON object with `stream: false`). The lease on the runner is held inside
the stream, so a client that disconnects closes the runner stream and frees its sequence; with
`stream: false` the collecting is abandoned the same way (`until_disconnected`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from corral.engine.base import Chunk, GenerateParams, Metrics, Runner
from corral.errors import BadRequestError, CorralError, PromptTooLongError
from corral.schemas.native import (
    ChatRequest,
    ChatResponse,
    DebugInfo,
    DebugResponse,
    GenerateRequest,
    GenerateResponse,
    Logprob,
    Message,
    TokenLogprob,
    ToolCall,
)
from corral.server.context import AppContext, Ctx
from corral.server.native.adapters import lora_scales
from corral.server.native.chatparse import OutputSplitter, Piece, Plan, chat_plan, generate_plan
from corral.server.native.vision import decode_images, placed, tag_messages, tag_raw
from corral.server.runtime import (
    Job,
    fit_messages,
    grown_for,
    leased,
    render_messages,
    require,
    resolve_job,
    scheduler_of,
    with_model_preamble,
)
from corral.server.stream import respond, until_disconnected

log = logging.getLogger(__name__)
router = APIRouter()
THINK_LEVELS = ("low", "medium", "high", "max")
ChatEvents = AsyncIterator[ChatResponse]
"""The typed chunks of one chat: what the native route frames as NDJSON and the compat layers translate."""
GenerateEvents = AsyncIterator[GenerateResponse]
T = TypeVar("T")


def level(think: object) -> str | None:
    """The think level of a request (`"low"`...`"max"`), None for booleans or unset."""
    return think if isinstance(think, str) else None


def check_common(req: GenerateRequest | ChatRequest) -> None:
    if not 0 <= req.top_logprobs <= 20:
        raise BadRequestError("top_logprobs must be between 0 and 20")
    think = req.think
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise BadRequestError(f"invalid think value: {think!r}")


def metrics_fields(m: Metrics | None, started_ns: int, load_ns: int, *, context: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"total_duration": time.monotonic_ns() - started_ns, "load_duration": load_ns}
    if m is not None:
        out.update(
            prompt_eval_count=m.prompt_eval_count,
            prompt_cache_count=m.prompt_cache_count,
            prompt_eval_duration=m.prompt_eval_duration,
            eval_count=m.eval_count,
            eval_duration=m.eval_duration,
        )
        if context:
            out["context"] = m.context
    return out


def token_logprobs(chunk: Chunk) -> list[TokenLogprob]:
    """Spec §1 `logprobs` of a chunk (`bytes` and `top_logprobs` omitted when empty, as in Go).
    Plain constructors, as for every chunk: pydantic's validating `__init__` (in Rust) costs less
    than `model_construct` (a Python loop over the fields), about 3 against 7 us for a chunk."""
    return [
        TokenLogprob(token=lp.token, logprob=lp.logprob, bytes=lp.bytes or None,
                     top_logprobs=[Logprob(token=t.token, logprob=t.logprob, bytes=t.bytes or None)
                                   for t in lp.top_logprobs] or None)
        for lp in chunk.logprobs
    ]


def debug_response(model: str, prompt: str, images: list[bytes]) -> DebugResponse:
    return DebugResponse.model_validate({"model": model, "created_at": datetime.now(UTC), "_debug_info":
                                         DebugInfo(rendered_template=prompt, image_count=len(images))})


async def lifecycle_only(ctx: AppContext, job: Job, shape: Callable[[str], T]) -> AsyncIterator[T]:
    """Empty prompt/messages: load the model, or unload it when keep_alive is 0."""
    if job.keep_alive is not None and job.keep_alive <= 0:
        await scheduler_of(ctx).unload(job.ref)
        yield shape("unload")
        return
    async with leased(ctx, job):
        pass
    yield shape("load")


def sample_params(job: Job, prompt: str, req: GenerateRequest | ChatRequest, images: list[bytes],
                  plan: Plan | None = None, *, context: list[int] | None = None,
                  prompt_tokens: list[int] | None = None) -> GenerateParams:
    """The engine request: `context` ids run before the prompt, `prompt_tokens` are the prompt's
    ids when the server already has them (see `GenerateParams`)."""
    return GenerateParams(
        prompt=prompt,
        context=context or [],
        prompt_tokens=prompt_tokens,
        options=job.options.sample,
        images=images,
        grammar=plan.grammar(prompt) if plan is not None else None,
        logprobs=req.logprobs or req.top_logprobs > 0,
        top_logprobs=req.top_logprobs,
        truncate=req.truncate is not False,
        shift=req.shift is not False,
        ignore_eos=req.ignore_eos,
        lora=lora_scales(job, req.model_extra, req.options),
    )


# /api/generate ---------------------------------------------------------------------------------
@router.post("/api/generate")
async def generate(req: GenerateRequest, ctx: Ctx, request: Request) -> Response:
    items = await start_generate(ctx, req)
    if isinstance(items, DebugResponse):
        return JSONResponse(items.dump())
    if req.stream is False:
        return JSONResponse((await until_disconnected(request, collect_generate(items))).dump())
    return await respond(items, True)


async def generate_events(ctx: AppContext, req: GenerateRequest) -> GenerateEvents:
    """Validate a generate request and return its stream of typed chunks (errors raise here)."""
    items = await start_generate(ctx, req)
    if isinstance(items, DebugResponse):
        raise BadRequestError("_debug_render_only is not supported on this route")
    return items


async def start_generate(ctx: AppContext, req: GenerateRequest) -> GenerateEvents | DebugResponse:
    """Validate a generate request; its typed chunks, or the rendered prompt for `_debug_render_only`."""
    check_common(req)
    if req.raw and (req.template or req.system or req.context):
        raise BadRequestError("raw mode does not support template, system, or context")
    job = await resolve_job(ctx, req.model, req.options, req.keep_alive)
    require(job, "completion", f'"{req.model}" does not support generate')
    if req.suffix:
        require(job, "insert", f'"{req.model}" does not support insert')
    plan = generate_plan(job, req)
    images = decode_images(job, req.images, req.model)

    def shape(reason: str) -> GenerateResponse:
        return GenerateResponse(model=req.model, created_at=datetime.now(UTC), done=True, done_reason=reason)

    if not req.prompt and not req.suffix and not images:
        return lifecycle_only(ctx, job, shape)
    if req.debug_render_only:
        return debug_response(req.model, generate_prompt(job, req, [], plan.think), images)
    return generate_stream(ctx, job, req, images, plan)


async def context_parts(runner: Runner, req: GenerateRequest, images: list[bytes]) -> tuple[list[int], list[str]]:
    """/api/generate's `context`: ids that run as they are before the prompt (the runner checks
    them against the vocabulary); for a prompt with images, which the runner reads as text, the
    ids' text (as Ollama does, lossy)."""
    if not req.context:
        return [], []
    if images:
        return [], [await runner.detokenize(req.context)]
    return list(req.context), []


def generate_prompt(job: Job, req: GenerateRequest, context_text: list[str], think: bool | None = None) -> str:
    if req.raw:
        return tag_raw(req.prompt, len(req.images or []))
    user = Message(role="user", content=req.prompt, images=req.images or None)
    messages = with_model_preamble(job, tag_messages([user]), req.system)
    if req.context is not None:
        messages = [m for m in messages if m.role == "system"] + [messages[-1]]
    prompt = render_messages(job, messages, template=req.template, think=think, think_level=level(req.think))
    return "".join(context_text) + prompt


async def generate_stream(ctx: AppContext, job: Job, req: GenerateRequest, images: list[bytes], plan: Plan
                          ) -> GenerateEvents:
    started = time.monotonic_ns()
    async with leased(ctx, job) as (runner, load_ns):
        context_ids, context_text = await context_parts(runner, req, images)
        prompt, images = placed(generate_prompt(job, req, context_text, plan.think), images)
        splitter = plan.splitter(prompt)
        async for chunk in runner.generate(sample_params(job, prompt, req, images, plan, context=context_ids)):
            piece = splitter.feed(chunk.text, final=chunk.done)
            if not (piece or chunk.logprobs or chunk.done):
                continue
            final: dict[str, Any] = {}
            if chunk.done:
                final = {"done_reason": chunk.done_reason or "stop",
                         **metrics_fields(chunk.metrics, started, load_ns, context=not req.raw)}
                ctx.record_generation(req.model, chunk.metrics, started, load_ns)
            yield GenerateResponse(model=req.model, created_at=datetime.now(UTC), response=piece.content,
                                   thinking=piece.thinking or None, done=chunk.done,
                                   logprobs=token_logprobs(chunk) or None, **final)


def _ended(last: T | None) -> T:
    if last is None:
        raise CorralError("the model's stream ended without a final chunk")
    return last


async def collect_generate(items: GenerateEvents) -> GenerateResponse:
    """The whole answer as one response (`stream: false`): the final chunk with all text joined."""
    text: list[str] = []
    thinking: list[str] = []
    logprobs: list[TokenLogprob] = []
    last: GenerateResponse | None = None
    async for item in items:
        text.append(item.response)
        thinking.append(item.thinking or "")
        logprobs.extend(item.logprobs or [])
        last = item
    return _ended(last).model_copy(update={"response": "".join(text), "thinking": "".join(thinking) or None,
                                           "logprobs": logprobs or None})


# /api/chat ---------------------------------------------------------------------------------------
@router.post("/api/chat")
async def chat(req: ChatRequest, ctx: Ctx, request: Request) -> Response:
    items = await start_chat(ctx, req)
    if isinstance(items, DebugResponse):
        return JSONResponse(items.dump())
    if req.stream is False:
        return JSONResponse((await until_disconnected(request, collect_chat(items))).dump())
    return await respond(items, True)


async def chat_events(ctx: AppContext, req: ChatRequest) -> ChatEvents:
    """Validate a chat request and return its stream of typed chunks (errors raise here)."""
    items = await start_chat(ctx, req)
    if isinstance(items, DebugResponse):
        raise BadRequestError("_debug_render_only is not supported on this route")
    return items


async def start_chat(ctx: AppContext, req: ChatRequest) -> ChatEvents | DebugResponse:
    """Validate a chat request; its typed chunks, or the rendered prompt for `_debug_render_only`."""
    check_common(req)
    job = await resolve_job(ctx, req.model, req.options, req.keep_alive)
    require(job, "completion", f'"{req.model}" does not support chat')
    plan = chat_plan(job, req)
    images = decode_images(job, [i for m in req.messages for i in (m.images or [])], req.model)

    def shape(reason: str) -> ChatResponse:
        return ChatResponse(model=req.model, created_at=datetime.now(UTC), message=Message(role="assistant"),
                            done=True, done_reason=reason)

    if not req.messages:
        return lifecycle_only(ctx, job, shape)
    messages = tag_messages(with_model_preamble(job, req.messages))
    if req.debug_render_only:
        prompt = render_messages(job, messages, tools=plan.render_tools, think=plan.think,
                                 think_level=level(req.think))
        return debug_response(req.model, prompt, images)
    return chat_stream(ctx, job, req, messages, images, plan)


def chat_message(piece: Piece) -> Message:
    return Message(role="assistant", content=piece.content, thinking=piece.thinking or None,
                   tool_calls=list(piece.tool_calls) or None)


async def chat_stream(ctx: AppContext, job: Job, req: ChatRequest, messages: list[Message],
                      images: list[bytes], plan: Plan) -> ChatEvents:
    """The chat's chunks; a prompt whose tools do not fit a context nobody chose runs again in a
    context grown to hold it (`grown_for`) before anything has been sent."""
    try:
        async for out in _chat_once(ctx, job, req, messages, images, plan):
            yield out
        return
    except PromptTooLongError as exc:
        bigger = grown_for(job, exc.tokens)
        if bigger is None:
            raise
        log.info("prompt of %d tokens with tools: loading %s with num_ctx=%d", exc.tokens, job.name,
                 bigger.options.load.num_ctx)
    async for out in _chat_once(ctx, bigger, req, messages, images, plan):
        yield out


async def _chat_once(ctx: AppContext, job: Job, req: ChatRequest, messages: list[Message],
                     images: list[bytes], plan: Plan) -> ChatEvents:
    started = time.monotonic_ns()
    async with leased(ctx, job) as (runner, load_ns):
        def render(msgs: list[Message]) -> str:
            return render_messages(job, msgs, tools=plan.render_tools, think=plan.think,
                                   think_level=level(req.think))

        tools = len(plan.render_tools or [])
        fitted = await fit_messages(runner, job, messages, render, tools=tools) if req.truncate is not False else None
        prompt, images = placed(fitted.prompt if fitted is not None else render(messages), images)
        # the fit's ids run as they are (counted once), unless images made the prompt text again
        ids = fitted.ids if fitted is not None and not images and prompt == fitted.prompt else None
        splitter: OutputSplitter = plan.splitter(prompt)
        async for chunk in runner.generate(sample_params(job, prompt, req, images, plan, prompt_tokens=ids)):
            piece = splitter.feed(chunk.text, final=chunk.done)
            if not (piece or chunk.logprobs or chunk.done):
                continue
            final: dict[str, Any] = {}
            if chunk.done:
                final = {"done_reason": chunk.done_reason or "stop",
                         **metrics_fields(chunk.metrics, started, load_ns, context=False)}
                ctx.record_generation(req.model, chunk.metrics, started, load_ns)
            yield ChatResponse(model=req.model, created_at=datetime.now(UTC), message=chat_message(piece),
                               done=chunk.done, logprobs=token_logprobs(chunk) or None, **final)


async def collect_chat(items: ChatEvents) -> ChatResponse:
    """The whole answer as one response (`stream: false`): the final chunk with the message joined."""
    text: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    logprobs: list[TokenLogprob] = []
    last: ChatResponse | None = None
    async for item in items:
        text.append(item.message.content)
        thinking.append(item.message.thinking or "")
        calls.extend(item.message.tool_calls or [])
        logprobs.extend(item.logprobs or [])
        last = item
    final = _ended(last)
    message = final.message.model_copy(update={"content": "".join(text), "thinking": "".join(thinking) or None,
                                               "tool_calls": calls or None})
    return final.model_copy(update={"message": message, "logprobs": logprobs or None})

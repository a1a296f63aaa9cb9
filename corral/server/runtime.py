"""From a request to a runnable job: model resolution, options, prompt rendering, leases.

Owns the rules shared by every inference route (spec §1, §2, §9): which model, which merged
options, which LoadSpec (so the scheduler knows when to reload), how the prompt is rendered
(Go template layer, else the GGUF's Jinja template, else `{{ .Prompt }}`), and truncation of
old chat turns to fit `num_ctx`. Knows nothing about the response format.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from starlette.concurrency import run_in_threadpool

from corral.durations import keep_alive_seconds
from corral.engine.base import LoadSpec, Runner
from corral.errors import (
    BadRequestError,
    ModelNotFoundError,
    PromptTooLongError,
    RunnerStoppedError,
    ServerBusyError,
)
from corral.gguf import GGUFInfo
from corral.names import ModelName
from corral.scheduler import ModelRef, Scheduler
from corral.schemas.native import Message, Tool
from corral.schemas.options import ResolvedOptions
from corral.server.context import AppContext
from corral.server.native.modelinfo import capabilities, gguf_info, model_details
from corral.server.native.truncate import Fitted, fit_chat
from corral.store.store import Model as StoredModel
from corral.template.jinja import render_jinja
from corral.template.prompt import render_chat

DEFAULT_TEMPLATE = "{{ .Prompt }}"
MIN_CTX = 4


@dataclass
class Job:
    """A resolved inference target."""

    name: str
    model: StoredModel
    info: GGUFInfo | None
    options: ResolvedOptions
    ref: ModelRef
    capabilities: list[str]
    keep_alive: float | None


async def resolve_job(
    ctx: AppContext,
    model_name: str,
    options: dict[str, Any] | None,
    keep_alive: object,
) -> Job:
    """Resolve the model and merge options; an unknown model is a `ModelNotFoundError`."""
    name = ModelName.try_parse(model_name or "")
    if name is None:
        if not model_name:
            raise BadRequestError("model is required")
        raise BadRequestError("invalid model name")
    try:
        model = await run_in_threadpool(lambda: ctx.store.load_model(ctx.store.resolve(name)))
    except ModelNotFoundError:
        raise ModelNotFoundError(model_name) from None
    if model.model_path is None:
        raise BadRequestError(f"model '{model_name}' has no weights to run")
    info = await run_in_threadpool(gguf_info, ctx, model)
    caps = capabilities(model, info)
    # Operator per-model defaults ([models."name"] in the config file) sit over the Modelfile's
    # parameters and the global settings, under the request's own options and keep_alive.
    operator = ctx.settings.defaults_for(model.name)
    model_params = {**(model.params or {}), **(operator.options if operator else {})}
    resolved = ResolvedOptions.merge(
        model_params, options, default_num_ctx=ctx.settings.default_num_ctx
    )
    resolved = _clamp_ctx(resolved, info, ctx.settings.num_thread)
    embedding = "embedding" in caps and "completion" not in caps
    spec = LoadSpec(
        model_path=model.model_path,
        options=resolved.load,
        num_parallel=1 if embedding else (operator and operator.num_parallel) or ctx.settings.num_parallel,
        embedding=embedding,
        adapters=tuple(model.adapters),
        projectors=tuple(model.projectors),
        draft=model.draft,
    )
    short = model.name.display_shortest()
    details = model_details(model).dump()
    flexible = "num_ctx" not in (options or {}) and "num_ctx" not in model_params
    ref = ModelRef(name=short, digest=model.manifest_digest, spec=spec, details=details, ctx_flexible=flexible)
    keep = keep_alive_seconds(keep_alive)
    if keep is None and operator is not None:
        keep = operator.keep_alive_seconds
    return Job(short, model, info, resolved, ref, caps, keep)


CTX_STEP = 2048  # a grown context is rounded up to this
CTX_HEADROOM = 1024  # tokens left for the answer when a context is grown to fit a prompt


def grown_for(job: Job, tokens: int) -> Job | None:
    """The job with a context large enough for a `tokens`-long prompt (plus room to answer), when
    nobody chose num_ctx and the model was trained for it; None otherwise.

    Agents and chat UIs attach many tools (Open WebUI: 36 tools, ~6k tokens with SmolLM2): rather
    than cut tool definitions or refuse, the runner is reloaded with a context that holds them.
    """
    limit = job.info.context_length if job.info is not None else 0
    if not job.ref.ctx_flexible or not limit or tokens + 1 >= limit:
        return None
    want = -(-(tokens + CTX_HEADROOM) // CTX_STEP) * CTX_STEP
    num_ctx = min(max(want, job.options.load.num_ctx), limit)
    if num_ctx <= job.options.load.num_ctx:
        return None
    load = replace(job.options.load, num_ctx=num_ctx)
    spec = replace(job.ref.spec, options=load)
    ref = replace(job.ref, spec=spec)
    return replace(job, options=ResolvedOptions(load=load, sample=job.options.sample), ref=ref)


def _clamp_ctx(resolved: ResolvedOptions, info: GGUFInfo | None, default_threads: int = 0) -> ResolvedOptions:
    """num_ctx within [4, the model's trained context]; num_thread 0 takes CORRAL_NUM_THREAD."""
    num_ctx = max(resolved.load.num_ctx, MIN_CTX)
    if info is not None and info.context_length:
        num_ctx = min(num_ctx, info.context_length)
    threads = resolved.load.num_thread or default_threads
    load = replace(resolved.load, num_ctx=num_ctx, num_thread=threads)
    return resolved if load == resolved.load else ResolvedOptions(load=load, sample=resolved.sample)


def scheduler_of(ctx: AppContext) -> Scheduler:
    if ctx.scheduler is None:
        raise BadRequestError("this server was started without an inference engine")
    return ctx.scheduler


@asynccontextmanager
async def leased(ctx: AppContext, job: Job) -> AsyncIterator[tuple[Runner, int]]:
    """A runner for the job plus the nanoseconds spent getting it (load_duration)."""
    started = time.monotonic_ns()
    scheduler = scheduler_of(ctx)
    async with scheduler.lease(job.ref, job.keep_alive) as runner:
        try:
            yield runner, time.monotonic_ns() - started
        except RunnerStoppedError:
            if scheduler.stopping:
                raise ServerBusyError("server is shutting down") from None
            raise


def require(job: Job, capability: str, message: str) -> None:
    if capability not in job.capabilities:
        raise BadRequestError(message)


def render_messages(
    job: Job,
    messages: list[Message],
    *,
    tools: list[Tool] | None = None,
    template: str | None = None,
    think: bool | None = None,
    think_level: str | None = None,
) -> str:
    """Render a conversation with the Go template layer, else the GGUF Jinja template."""
    go_template = template or job.model.template
    if go_template:
        return render_chat(go_template, messages, tools=tools, think=think, think_level=think_level,
                           is_think_set=think is not None)
    info = job.info
    if info is not None and info.chat_template:
        return render_jinja(
            info.chat_template,
            messages,
            tools=tools,
            add_generation_prompt=True,
            bos_token=info.bos_token or "",
            eos_token=info.eos_token or "",
            enable_thinking=think,
        )
    return render_chat(DEFAULT_TEMPLATE, messages, tools=tools)


def with_model_preamble(job: Job, messages: list[Message], system: str | None = None) -> list[Message]:
    """Prepend the model's SYSTEM (unless the conversation has one) and its MESSAGE history."""
    out: list[Message] = []
    sys_text = system if system is not None else job.model.system
    if sys_text and not (messages and messages[0].role == "system"):
        out.append(Message(role="system", content=sys_text))
    out.extend(Message(role=m.get("role", "user"), content=m.get("content", "")) for m in job.model.messages)
    out.extend(messages)
    return out


async def fit_messages(
    runner: Runner, job: Job, messages: list[Message], render: Any, *, tools: int = 0
) -> Fitted:
    """Drop the oldest non-system messages until the prompt fits num_ctx (spec: chatPrompt), in
    linear time (`corral.server.native.truncate`); the last message and system messages are always kept.
    The prompt comes back with its ids when the fit tokenized it (they run as they are: counted once).

    A prompt that still does not fit is cut by the runner, unless it declares `tools`: cutting
    would drop tool definitions from the middle of the prompt, so that is a 400 naming the sizes.
    """
    num_ctx = job.options.load.num_ctx

    fitted = await fit_chat(messages, render, runner.tokenize, num_ctx)
    if tools and fitted.tokens is not None and fitted.tokens >= num_ctx:
        raise PromptTooLongError(
            f"the prompt is {fitted.tokens} tokens (with {tools} tools), more than the model's context window "
            f"num_ctx={num_ctx}: raise num_ctx (the request's num_ctx option, PARAMETER num_ctx in a "
            "Modelfile, or CORRAL_CONTEXT_LENGTH for the server) or send fewer tools", tokens=fitted.tokens)
    return fitted

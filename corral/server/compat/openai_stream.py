"""Native chunk streams -> OpenAI wire shapes: SSE framing, ids, chat chunks, merged `n` streams.

Owns the conversion of the typed native chat chunks (`ChatResponse`) produced by
`corral.server.native.inference` into
OpenAI chat-completion objects and `chat.completion.chunk`s (spec §1), the SSE encoding shared by
the /v1 routes (including errors after the first byte), and the error body formatters registered
for `/v1/*`. Holds no inference logic and knows nothing about request translation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import StreamingResponse

from corral.errors import CorralError
from corral.schemas.native import ChatResponse, Logprob, TokenLogprob, ToolCall
from corral.server.errors import unexpected_error
from corral.server.framing import SSE, sse_data

log = logging.getLogger(__name__)
FINGERPRINT = "fp_ollama"
Native = AsyncIterator[ChatResponse]


def short_id(prefix: str) -> str:
    """Ollama's ids: a prefix and a number below 999 (`chatcmpl-<n>`, `cmpl-<n>`)."""
    return f"{prefix}-{random.randrange(999)}"


# SSE ------------------------------------------------------------------------------------------
async def sse_response(frames: AsyncIterator[bytes], on_error: Callable[[CorralError], bytes]) -> StreamingResponse:
    """Start the stream only after its first frame, so early errors keep their HTTP status."""
    first = await anext(frames, b"")

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        try:
            async for frame in frames:
                yield frame
        except CorralError as exc:
            yield on_error(exc)
        except Exception as exc:
            yield on_error(unexpected_error(exc))

    return StreamingResponse(body(), media_type=SSE)


# Merging n streams ---------------------------------------------------------------------------
async def merge_streams(streams: list[Native]) -> AsyncIterator[tuple[int, ChatResponse]]:
    """Interleave several native streams, tagging each chunk with its stream's index."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: Native) -> None:
        try:
            async for item in stream:
                await queue.put((i, item))
            await queue.put((i, done))
        except BaseException as exc:
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# Chat conversion -----------------------------------------------------------------------------
def _logprob(lp: Logprob) -> dict[str, Any]:
    return {"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes}


def openai_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    """Native logprobs -> `{"content": [...]}`; OpenAI always carries `bytes` and `top_logprobs`."""
    return {"content": [{**_logprob(lp), "top_logprobs": [_logprob(t) for t in lp.top_logprobs or []]}
                        for lp in items]}


def openai_tool_calls(native: list[ToolCall], start: int = 0) -> list[dict[str, Any]]:
    out = []
    for i, tc in enumerate(native, start):
        out.append({"id": tc.id or f"call_{random.getrandbits(40):010x}", "index": i, "type": "function",
                    "function": {"name": tc.function.name,
                                 "arguments": json.dumps(tc.function.arguments, ensure_ascii=False)}})
    return out


def finish_reason(done_reason: str | None, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage_of(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """OpenAI's `usage`; `prompt_tokens_details.cached_tokens` are the prompt tokens served from the
    KV or prompt cache (the native `prompt_cache_count`, counted inside `prompt_tokens`)."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


@dataclass
class ChoiceState:
    """What one choice accumulated so far."""

    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    done_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    started: bool = False

    def absorb(self, chunk: ChatResponse) -> None:
        msg = chunk.message
        if msg.content:
            self.content.append(msg.content)
        if msg.thinking:
            self.thinking.append(msg.thinking)
        if msg.tool_calls:
            self.tool_calls.extend(msg.tool_calls)
        if chunk.logprobs:
            self.logprobs.extend(chunk.logprobs)
        if chunk.done:
            self.done_reason = chunk.done_reason
            self.prompt_tokens = chunk.prompt_eval_count or 0
            self.cached_tokens = chunk.prompt_cache_count or 0
            self.completion_tokens = chunk.eval_count or 0


def chat_choice(index: int, st: ChoiceState, want_logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(st.content)}
    if st.thinking:
        message["reasoning"] = "".join(st.thinking)
    if st.tool_calls:
        message["tool_calls"] = openai_tool_calls(st.tool_calls)
    choice: dict[str, Any] = {"index": index, "message": message,
                              "finish_reason": finish_reason(st.done_reason, bool(st.tool_calls))}
    if want_logprobs:
        choice["logprobs"] = openai_logprobs(st.logprobs)
    return choice


async def chat_completion(streams: list[Native], model: str, *, want_logprobs: bool) -> dict[str, Any]:
    """Collect native chat streams into one `chat.completion` object."""
    states = [ChoiceState() for _ in streams]
    async for i, chunk in merge_streams(streams):
        states[i].absorb(chunk)
    return {
        "id": short_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [chat_choice(i, st, want_logprobs) for i, st in enumerate(states)],
        "usage": usage_of(states[0].prompt_tokens, sum(s.completion_tokens for s in states), states[0].cached_tokens),
    }


class ChatChunker:
    """Turns native chat chunks into `chat.completion.chunk` objects (one id and `created` per stream)."""

    def __init__(self, model: str, n: int, *, include_usage: bool, want_logprobs: bool) -> None:
        self.id = short_id("chatcmpl")
        self.created = int(time.time())
        self.model = model
        self.states = [ChoiceState() for _ in range(n)]
        self.include_usage = include_usage
        self.want_logprobs = want_logprobs

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT, "choices": choices, **extra}

    def delta(self, index: int, delta: dict[str, Any], logprobs: list[TokenLogprob] | None = None,
              reason: str | None = None) -> dict[str, Any]:
        st = self.states[index]
        if not st.started:
            st.started = True
            delta = {"role": "assistant", **delta}
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": reason}
        if self.want_logprobs and logprobs is not None:
            choice["logprobs"] = openai_logprobs(logprobs)
        return self.chunk([choice])

    def convert(self, index: int, native: ChatResponse) -> list[dict[str, Any]]:
        st = self.states[index]
        before = len(st.tool_calls)
        st.absorb(native)
        msg = native.message
        out: list[dict[str, Any]] = []
        if msg.thinking:
            out.append(self.delta(index, {"reasoning": msg.thinking}))
        lps = native.logprobs
        if msg.content:
            out.append(self.delta(index, {"content": msg.content}, lps or []))
        elif lps and self.want_logprobs:
            out.append(self.delta(index, {"content": ""}, lps))
        if len(st.tool_calls) > before:
            calls = openai_tool_calls(st.tool_calls[before:], before)
            out.append(self.delta(index, {"tool_calls": calls}))
        if native.done:
            out.append(self.delta(index, {}, reason=finish_reason(st.done_reason, bool(st.tool_calls))))
        return out

    def usage_chunk(self) -> dict[str, Any]:
        first = self.states[0]
        usage = usage_of(first.prompt_tokens, sum(s.completion_tokens for s in self.states), first.cached_tokens)
        return self.chunk([], usage=usage)


async def chat_sse(streams: list[Native], chunker: ChatChunker) -> AsyncIterator[bytes]:
    async for i, native in merge_streams(streams):
        for chunk in chunker.convert(i, native):
            yield sse_data(chunk)
    if chunker.include_usage:
        yield sse_data(chunker.usage_chunk())
    yield sse_data("[DONE]")

"""Request types of the OpenAI-compatible API (`/v1/*`, spec §1 "OpenAI compatibility").

Only requests live here: responses are built as plain dicts by the translation layer, in the exact
shapes of the spec. Every model accepts unknown fields (clients send many we do not use); the
server logs them once per request with `log_ignored_fields` (vLLM style) instead of rejecting.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class OpenAIModel(BaseModel):
    """Base of every /v1 request: unknown fields are kept (and logged), never rejected."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def log_ignored_fields(route: str, req: OpenAIModel, used: frozenset[str] = frozenset()) -> None:
    """Log the extra fields of a request that the translation does not use."""
    ignored = sorted(k for k in req.extras() if k not in used)
    if ignored:
        log.warning("%s: ignoring unsupported fields: %s", route, ", ".join(ignored))


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class ChatMessage(OpenAIModel):
    role: str
    content: Any = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class Reasoning(OpenAIModel):
    effort: str | None = None
    summary: str | None = None


class ChatCompletionRequest(OpenAIModel):
    model: str
    messages: list[ChatMessage] = Field(default_factory=list)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None
    user: str | None = None
    parallel_tool_calls: bool | None = None
    debug_render_only: bool = Field(default=False, alias="_debug_render_only")


class CompletionRequest(OpenAIModel):
    model: str
    prompt: Any = ""
    suffix: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: int | None = None
    echo: bool | None = None
    n: int | None = None
    best_of: int | None = None
    user: str | None = None


class EmbeddingRequest(OpenAIModel):
    model: str
    input: Any = None
    dimensions: int | None = None
    encoding_format: str | None = None
    user: str | None = None


class ResponsesRequest(OpenAIModel):
    model: str
    input: Any = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    reasoning: Reasoning | None = None
    text: dict[str, Any] | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    truncation: str | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None

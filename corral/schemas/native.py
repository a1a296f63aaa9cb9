"""Wire types of the native Ollama API (`/api/*`, spec §1), shared by server and client.

Field names follow Ollama's JSON exactly. Requests allow unknown fields (Ollama's decoder ignores
them); responses omit unset optional fields the way Go's `omitempty` does (see `dump`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class WireModel(BaseModel):
    """Base for every wire type: unknown fields accepted, `dump` omits None like omitempty.

    As the official `ollama` client's types, a value also reads like the JSON object it came from:
    `chunk["message"]["content"]`, `"tool_calls" in message` (a field is "in" when it was set or
    has a non-None default) and `chunk.get("thinking", "")` (the default when the field is not "in",
    as a dict's `get`, so code written for the JSON objects keeps working).
    """

    # JSON text keeps Python's `Infinity` for a float that is one (a -inf logprob), as `json.dumps` did
    model_config = ConfigDict(extra="allow", populate_by_name=True, ser_json_inf_nan="constants")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)

    def __getitem__(self, key: str) -> Any:
        if key in self:
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self.model_fields_set or key in (self.__pydantic_extra__ or {}):
            return True
        info = type(self).model_fields.get(key)
        return info is not None and info.default is not None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default


# Messages, tools -----------------------------------------------------------------------------
class ToolCallFunction(WireModel):
    index: int | None = None
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(WireModel):
    id: str | None = None
    function: ToolCallFunction


class Message(WireModel):
    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("content", mode="before")
    @classmethod
    def _null_content(cls, value: object) -> object:
        return "" if value is None else value


class ToolFunction(WireModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class Tool(WireModel):
    type: str = "function"
    function: ToolFunction


# Model management ----------------------------------------------------------------------------
class ModelDetails(WireModel):
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int | None = None
    embedding_length: int | None = None


class ListModel(WireModel):
    name: str
    model: str
    modified_at: datetime
    size: int
    digest: str
    details: ModelDetails
    capabilities: list[str] | None = None


class ListResponse(WireModel):
    models: list[ListModel] = Field(default_factory=list)


class ShowRequest(WireModel):
    model: str | None = None
    name: str | None = None
    verbose: bool = False
    system: str | None = None
    options: dict[str, Any] | None = None


class ShowResponse(WireModel):
    license: str | None = None
    modelfile: str | None = None
    parameters: str | None = None
    template: str | None = None
    system: str | None = None
    details: ModelDetails | None = None
    messages: list[Message] | None = None
    model_info: dict[str, Any] | None = None
    projector_info: dict[str, Any] | None = None
    tensors: list[dict[str, Any]] | None = None
    capabilities: list[str] | None = None
    modified_at: datetime | None = None


class ProgressResponse(WireModel):
    """One status line of a long operation (create, pull, push)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class CreateRequest(WireModel):
    model: str | None = None
    name: str | None = None
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None
    quantize: str | None = None
    quantization: str | None = None
    stream: bool | None = None
    draft_files: dict[str, str] | None = None  # a draft model's GGUF blob (Modelfile DRAFT <file>)
    draft_quantize: str | None = None
    draft: str | None = None  # corral: a local model whose weights draft (Modelfile DRAFT <name>)


class CopyRequest(WireModel):
    source: str
    destination: str


class DeleteRequest(WireModel):
    model: str | None = None
    name: str | None = None


class PullRequest(WireModel):
    model: str | None = None
    name: str | None = None
    insecure: bool = False
    stream: bool | None = None


class PushRequest(PullRequest):
    pass


class VersionResponse(WireModel):
    version: str


class ProcessModel(WireModel):
    """One loaded model in `/api/ps`."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: datetime
    size_vram: int = 0
    context_length: int | None = None
    rpc: dict[str, Any] | None = None  # corral's extension: layers on RPC workers (CORRAL_RPC_WORKERS)


class ProcessResponse(WireModel):
    models: list[ProcessModel] = Field(default_factory=list)


# Inference -----------------------------------------------------------------------------------
class GenerateRequest(WireModel):
    model: str
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = None
    raw: bool = False
    format: Any = None
    keep_alive: float | int | str | None = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    think: Any = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = Field(default=False, alias="_debug_render_only")
    ignore_eos: bool = False  # corral extension (llama.cpp's): generate through end-of-sequence


class ChatRequest(WireModel):
    model: str
    messages: list[Message] = Field(default_factory=list)
    stream: bool | None = None
    format: Any = None
    keep_alive: float | int | str | None = None
    tools: list[Tool] | None = None
    # corral extension (Ollama has none): "none" | "auto" | "required" | {"type": "function",
    # "function": {"name": ...}}; "required" and a named function constrain decoding to a tool call.
    tool_choice: Any = None
    ignore_eos: bool = False  # corral extension (llama.cpp's): generate through end-of-sequence
    options: dict[str, Any] | None = None
    think: Any = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = Field(default=False, alias="_debug_render_only")


class EmbedRequest(WireModel):
    model: str
    input: Any = None
    truncate: bool | None = None
    dimensions: int | None = None
    keep_alive: float | int | str | None = None
    options: dict[str, Any] | None = None


class EmbeddingsRequest(WireModel):
    model: str
    prompt: str = ""
    keep_alive: float | int | str | None = None
    options: dict[str, Any] | None = None


class Logprob(WireModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # omitempty, as in Go


class TokenLogprob(Logprob):
    top_logprobs: list[Logprob] | None = None


class GenerateResponse(WireModel):
    """One `/api/generate` chunk (the last has `done`, the reason and the metrics)."""

    model: str
    created_at: datetime
    response: str = ""
    thinking: str | None = None
    done: bool = False
    logprobs: list[TokenLogprob] | None = None
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_cache_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    context: list[int] | None = None


class ChatResponse(WireModel):
    """One `/api/chat` chunk (the last has `done`, the reason and the metrics)."""

    model: str
    created_at: datetime
    message: Message
    done: bool = False
    logprobs: list[TokenLogprob] | None = None
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_cache_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class DebugInfo(WireModel):
    rendered_template: str
    image_count: int = 0


class DebugResponse(WireModel):
    """The answer to `_debug_render_only` on `/api/generate`, `/api/chat` and `/v1/chat/completions`:
    the rendered prompt, nothing generated."""

    model: str
    created_at: datetime
    debug_info: DebugInfo = Field(alias="_debug_info")


class EmbedResponse(WireModel):
    """`/api/embed`: one L2-normalised vector per input (no durations for an empty input)."""

    model: str
    embeddings: list[list[float]] = Field(default_factory=list)
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingResponse(WireModel):
    """`/api/embeddings` (legacy): the raw vector of one prompt."""

    embedding: list[float] = Field(default_factory=list)


# llama-server's extras (corral extensions; Ollama has none) ------------------------------------
class TokenizeRequest(WireModel):
    """`/api/tokenize` (llama-server's `/tokenize`; `prompt` is accepted for `content`)."""

    model: str
    content: Any = None
    prompt: Any = None
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    keep_alive: float | int | str | None = None
    options: dict[str, Any] | None = None


class DetokenizeRequest(WireModel):
    model: str
    tokens: list[int] = Field(default_factory=list)
    keep_alive: float | int | str | None = None
    options: dict[str, Any] | None = None


class RerankRequest(WireModel):
    """`/api/rerank`, `/v1/rerank` (llama-server, Jina and Cohere: `documents` are strings or
    `{"text": ...}` objects; `texts` is TEI's name for them)."""

    model: str
    query: Any = None
    documents: Any = None
    texts: Any = None
    top_n: int | None = None
    return_documents: bool = False
    keep_alive: float | int | str | None = None
    options: dict[str, Any] | None = None

"""The engine boundary: what the scheduler and server may ask of a loaded model.

Kept deliberately narrow (load, generate-stream, embed, rerank, tokenize, detokenize, close) so a second
backend is one new module. The server renders prompts; an engine receives text and/or token ids plus
sampling parameters and streams `Chunk`s back. A new capability becomes a data field here, not a method.
Errors raised across this boundary are `corral.errors.CorralError` subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from corral.schemas.options import LoadOptions, SampleOptions


@dataclass(frozen=True)
class LoadSpec:
    """Everything that determines a loaded runner; two equal specs can share one runner."""

    model_path: Path
    options: LoadOptions = field(default_factory=LoadOptions)
    num_parallel: int = 1
    embedding: bool = False
    adapters: tuple[Path, ...] = ()
    projectors: tuple[Path, ...] = ()  # vision projector GGUF (mmproj), read with libmtmd
    draft: Path | None = None  # a draft model's GGUF (Modelfile DRAFT): same vocabulary, drafts tokens


@dataclass
class GenerateParams:
    """One generation request, already rendered to prompt text by the server.

    The prompt the model runs is `context` (token ids, as /api/generate's `context`: run exactly
    as given, never through text) followed by `prompt` (text, tokenized by the runner with special
    tokens parsed). When the server has already tokenized `prompt` (the chat fit counts it), it
    passes those ids as `prompt_tokens` (with special tokens parsed, no BOS/EOS added) and the
    runner runs them instead of tokenizing the text again. The model's BOS is added once, at the
    very start, only when the model wants one and the ids do not already start with it (context
    from an earlier answer does); its EOS at the end where the model adds one (llama.cpp's
    `add_special`). Ids outside the vocabulary are a 400 before anything is decoded. A prompt with
    `images` is text only (no `context`/`prompt_tokens`).

    `truncate` allows dropping the middle of an over-long prompt (keeping `options.num_keep`
    tokens); `shift` allows context shifting during generation. With `shift=False` an over-long
    prompt is a 400 with the spec's text. Image N of `images` (encoded image files) goes where the
    prompt says `[img-N]`; every image must be placed.
    """

    prompt: str
    context: list[int] = field(default_factory=list)
    prompt_tokens: list[int] | None = None
    options: SampleOptions = field(default_factory=SampleOptions)
    images: list[bytes] = field(default_factory=list)
    grammar: str | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True
    shift: bool = True
    ignore_eos: bool = False  # llama.cpp's extension: never sample end-of-generation tokens
    # One scale per ADAPTER layer of the model, in order (llama-server's per-request `lora`);
    # None: every adapter at 1.0, as loaded
    lora: tuple[float, ...] | None = None


@dataclass
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int] = field(default_factory=list)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int] = field(default_factory=list)
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass
class Metrics:
    """Counts and durations of one finished generation (durations in nanoseconds)."""

    prompt_eval_count: int = 0
    prompt_cache_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    context: list[int] = field(default_factory=list)


@dataclass
class Chunk:
    """A piece of streamed output. The last chunk has `done=True`, a reason and metrics."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    done: bool = False
    done_reason: str | None = None
    metrics: Metrics | None = None


@dataclass
class EmbedResult:
    embeddings: list[list[float]]
    prompt_eval_count: int = 0


@dataclass
class RerankResult:
    """One relevance score per document, in the documents' order."""

    scores: list[float]
    prompt_eval_count: int = 0


class Runner(Protocol):
    """A loaded model. Closing ends the process that holds it."""

    @property
    def alive(self) -> bool: ...

    @property
    def memory_bytes(self) -> int: ...

    def generate(self, params: GenerateParams) -> AsyncIterator[Chunk]:
        """Stream chunks. Closing the iterator early cancels the sequence within one step."""
        ...

    async def embed(self, inputs: list[str], *, truncate: bool = True) -> EmbedResult:
        """Raw (un-normalised) pooled embeddings, one per input."""
        ...

    async def rerank(self, query: str, documents: list[str]) -> RerankResult:
        """Relevance of each document to the query (rank-pooling models only, else a 400)."""
        ...

    async def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of `text`: `add_special` adds BOS/EOS as the model does, `parse_special`
        turns special-token text (`<|im_start|>`) into its token."""
        ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    async def pieces(self, tokens: list[int]) -> list[bytes]:
        """The bytes of each token's text (special tokens included), for llama-server's `with_pieces`."""
        ...

    async def close(self, timeout: float = 5.0) -> None:
        """Stop: open streams end with an error; a process not gone within `timeout` s is killed."""
        ...


class Engine(Protocol):
    """Loads runners; `estimate` predicts the memory a spec needs before loading it."""

    async def load(self, spec: LoadSpec) -> Runner: ...

    def estimate(self, spec: LoadSpec) -> int: ...

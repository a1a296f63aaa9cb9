"""ScriptedEngine: a deterministic in-process engine for unit tests of the code around engines.

A real implementation of the `Engine`/`Runner` protocols (not a mock): it "generates" the words of
a script one chunk at a time, can be told to fail or die, and records what it was asked. Never a
substitute for the llama.cpp integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from corral.engine.base import Chunk, EmbedResult, GenerateParams, LoadSpec, Metrics, RerankResult
from corral.errors import CorralError, RunnerStoppedError


@dataclass
class ScriptedRunner:
    spec: LoadSpec
    words: list[str]
    delay: float = 0.0
    memory: int = 1000
    prompts: list[str] = field(default_factory=list)
    params: list[GenerateParams] = field(default_factory=list)  # every generate request, in order
    closed: bool = False
    dead: bool = False
    active: int = 0

    @property
    def alive(self) -> bool:
        return not (self.closed or self.dead)

    @property
    def memory_bytes(self) -> int:
        return self.memory

    async def generate(self, params: GenerateParams) -> AsyncIterator[Chunk]:
        self.prompts.append(params.prompt)
        self.params.append(params)
        self.active += 1
        try:
            limit = params.options.num_predict if params.options.num_predict >= 0 else len(self.words)
            count = 0
            for word in self.words[:limit]:
                if self.dead or self.closed:  # closing ends the runner, and its streams with it
                    raise RunnerStoppedError()
                await asyncio.sleep(self.delay)
                count += 1
                yield Chunk(text=word)
            reason = "length" if limit < len(self.words) else "stop"
            # its tokenizer is one id per word: context ids plus the prompt's (given or counted)
            given = params.prompt_tokens
            prompt_tokens = len(params.context) + (len(given) if given is not None else len(params.prompt.split()))
            yield Chunk(done=True, done_reason=reason,
                        metrics=Metrics(prompt_eval_count=prompt_tokens, eval_count=count))
        finally:
            self.active -= 1

    async def embed(self, inputs: list[str], *, truncate: bool = True) -> EmbedResult:
        vectors = [[float(len(text)), 1.0, 2.0] for text in inputs]
        return EmbedResult(embeddings=vectors, prompt_eval_count=sum(len(t.split()) for t in inputs))

    async def rerank(self, query: str, documents: list[str]) -> RerankResult:
        """Score: how many of the query's words the document contains."""
        words = set(query.lower().split())
        scores = [float(sum(w in words for w in d.lower().split())) for d in documents]
        return RerankResult(scores=scores, prompt_eval_count=sum(len(d.split()) + len(words) for d in documents))

    async def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return ([1] if add_special else []) + [len(w) for w in text.split()]

    async def detokenize(self, tokens: list[int]) -> str:
        return " ".join("x" * t for t in tokens)

    async def pieces(self, tokens: list[int]) -> list[bytes]:
        return [b"\xc3" if t == 5 else b"x" * t for t in tokens]  # 5: half of a UTF-8 character

    async def close(self, timeout: float = 5.0) -> None:
        self.closed = True


@dataclass
class ScriptedEngine:
    """Loads ScriptedRunners; `estimates` maps model paths to byte estimates."""

    words: list[str] = field(default_factory=lambda: ["Hello", " world", "!"])
    delay: float = 0.0
    load_delay: float = 0.0
    default_estimate: int = 1000
    estimates: dict[str, int] = field(default_factory=dict)
    fail_load: str | None = None
    runners: list[ScriptedRunner] = field(default_factory=list)

    async def load(self, spec: LoadSpec) -> ScriptedRunner:
        await asyncio.sleep(self.load_delay)
        if self.fail_load:
            raise CorralError(self.fail_load)
        runner = ScriptedRunner(spec, list(self.words), self.delay, self.estimate(spec))
        self.runners.append(runner)
        return runner

    def estimate(self, spec: LoadSpec) -> int:
        return self.estimates.get(str(spec.model_path), self.default_estimate)

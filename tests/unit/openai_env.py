"""Shared in-process setup for the /v1 unit tests: the app over the scripted engine, reached by
httpx (ASGITransport) or by the official SDKs pointed at that transport."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from corral.config import Settings
from corral.engine.fake import ScriptedEngine
from corral.names import ModelName
from corral.scheduler import Scheduler
from corral.schemas.native import CreateRequest
from corral.server.app import create_app
from corral.store.create import create_model
from corral.store.store import Store
from tests.ggufs import write_gguf

BASE = "http://127.0.0.1:11434"


def make_model(store: Store, tmp_path: Path, name: str, **fields: Any) -> None:
    digest = store.blobs.add_file(write_gguf(tmp_path / f"{name.replace('/', '_')}.gguf"))[0]
    req = CreateRequest.model_validate({"model": name, "files": {"m.gguf": digest}, **fields})
    for _ in create_model(store, ModelName.parse(name), req):
        pass


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(tmp_path / "models")
        self.settings = Settings(home=tmp_path)
        self.engine = ScriptedEngine()
        self.scheduler = Scheduler(self.engine, self.settings)
        self.app = create_app(self.settings, self.store, scheduler=self.scheduler, prune_on_start=False)
        make_model(self.store, tmp_path, "tiny", template="{{ if .System }}[{{ .System }}] {{ end }}{{ .Prompt }}")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE)

    @property
    def prompts(self) -> list[str]:
        return [p for r in self.engine.runners for p in r.prompts]

    def params(self) -> list[Any]:
        return [r.spec for r in self.engine.runners]


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
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out

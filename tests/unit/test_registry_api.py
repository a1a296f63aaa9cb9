"""corral's own `/v2/` registry routes, served by uvicorn on 127.0.0.1: read side, Range, push acceptance."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from corral.config import Settings
from corral.names import ModelName
from corral.registry.client import RegistryOptions, RetryPolicy
from corral.registry.download import DownloadTuning
from corral.registry.pull import pull_model
from corral.registry.push import push_model
from corral.server.app import create_app
from corral.store.manifests import Layer, Manifest
from corral.store.store import Store
from tests.support import free_port

MODEL = "application/vnd.ollama.image.model"
WEIGHTS = bytes(range(256)) * 4000


def _seed(store: Store, name: str) -> bytes:
    cfg_digest, cfg_size = store.blobs.add_bytes(b'{"model_format":"gguf"}')
    w_digest, w_size = store.blobs.add_bytes(WEIGHTS)
    manifest = Manifest(config=Layer("application/vnd.docker.container.image.v1+json", cfg_digest, cfg_size),
                        layers=[Layer(MODEL, w_digest, w_size)])
    store.write_manifest(ModelName.parse(name), manifest)
    return store.read_manifest(name)[1]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Store, bytes]]:
    cfg = Settings.model_validate({"home": tmp_path / "home", "models": tmp_path / "models", "noprune": True})
    store = Store(cfg.models_dir)
    raw = _seed(store, "smol:1")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, store), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}", store, raw
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_read_side(served: tuple[str, Store, bytes]) -> None:
    host, _, raw = served
    base = f"http://{host}/v2"
    with httpx.Client(trust_env=False) as c:
        assert c.get(base + "/").json() == {}
        r = c.get(base + "/library/smol/manifests/1")
        assert r.status_code == 200 and r.content == raw
        assert r.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert r.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
        h = c.head(base + "/library/smol/manifests/1")
        assert h.status_code == 200 and h.headers["Content-Length"] == str(len(raw))
        assert c.get(base + "/library/nope/manifests/1").status_code == 404
        digest = "sha256:" + hashlib.sha256(WEIGHTS).hexdigest()
        assert c.head(f"{base}/library/smol/blobs/{digest}").headers["Content-Length"] == str(len(WEIGHTS))
        part = c.get(f"{base}/library/smol/blobs/{digest}", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == WEIGHTS[10:20]
        assert part.headers["Content-Range"] == f"bytes 10-19/{len(WEIGHTS)}"
        assert c.get(f"{base}/library/smol/blobs/sha256:{'0' * 64}").status_code == 404


def test_pull_from_corral_and_push_back(served: tuple[str, Store, bytes], tmp_path: Path) -> None:
    host, origin, raw = served
    other = Store(tmp_path / "other")
    opts = RegistryOptions(insecure=True, retry=RetryPolicy(attempts=2, base=0.01))
    tuning = DownloadTuning(min_part=100_000, max_part=100_000)
    name = ModelName.parse(f"{host}/library/smol:1")
    assert [p.status for p in pull_model(other, name, opts, tuning=tuning)][-1] == "success"
    assert other.read_manifest(name)[1] == raw
    # push it back under a new name: blobs exist there (HEAD), only the manifest travels
    other.copy(name, f"{host}/team/copy:2")
    events = [p.status for p in push_model(other, ModelName.parse(f"{host}/team/copy:2"), opts)]
    assert events[-1] == "success"
    assert origin.read_manifest("team/copy:2")[1] == raw


def test_push_acceptance_with_chunks_and_mount(served: tuple[str, Store, bytes], tmp_path: Path) -> None:
    host, origin, _ = served
    src = Store(tmp_path / "src")
    fresh = bytes(reversed(WEIGHTS))
    cfg_digest, cfg_size = src.blobs.add_bytes(b'{"model_format":"gguf","x":1}')
    w_digest, w_size = src.blobs.add_bytes(fresh)
    name = ModelName.parse(f"{host}/team/fresh:1")
    config = Layer("application/vnd.docker.container.image.v1+json", cfg_digest, cfg_size)
    src.write_manifest(name, Manifest(config=config, layers=[Layer(MODEL, w_digest, w_size)]))
    opts = RegistryOptions(insecure=True, retry=RetryPolicy(attempts=2, base=0.01))
    assert [p.status for p in push_model(src, name, opts, chunk_size=300_000)][-1] == "success"
    assert origin.blobs.path(w_digest).read_bytes() == fresh
    assert origin.exists("team/fresh:1")
    with httpx.Client(trust_env=False) as c:
        r = c.post(f"http://{host}/v2/team/other/blobs/uploads/?mount={w_digest}&from=team/fresh")
        assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == w_digest
        start = c.post(f"http://{host}/v2/team/other/blobs/uploads/")
        loc = f"http://{host}{start.headers['Location']}"
        c.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})
        bad = c.put(loc + f"?digest=sha256:{'1' * 64}")
        assert bad.status_code == 400
    assert not [n for n in origin.blobs.list_names() if "tmp" in n]

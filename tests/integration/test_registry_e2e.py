"""Two real `corral serve` processes on loopback: pull from a peer, resume after a kill, push, hf.co.

Server A imports the bundled smollm2 and acts as a registry; server B pulls from A, from a
throttled fault-injecting registry (killed mid-pull, then resumed), pushes back to A, and pulls
`hf.co/...` from a local HF-compatible endpoint.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.registry_fake import FakeRegistry, digest_of
from tests.support import ServerProcess, running_server, smollm2_path

pytestmark = pytest.mark.integration
MODEL = "application/vnd.ollama.image.model"


def _pull(server: ServerProcess, model: str, timeout: float = 120) -> list[dict[str, object]]:
    with httpx.Client(base_url=server.url, timeout=timeout, trust_env=False) as c:
        r = c.post("/api/pull", json={"model": model, "insecure": True})
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.text.splitlines() if line]


def _blob_files(home: Path) -> dict[str, bytes]:
    blobs = home / "models" / "blobs"
    return {p.name: p.read_bytes() for p in blobs.iterdir() if p.name.startswith("sha256-") and "-" not in p.name[7:]}


def slow_blob(weights: bytes) -> bytes:
    return weights[::-1]


@pytest.fixture(scope="module")
def weights() -> bytes:
    return smollm2_path().read_bytes()


@pytest.fixture(scope="module")
def fake(weights: bytes) -> Iterator[FakeRegistry]:
    with FakeRegistry() as reg:
        # a blob no server has yet (the real GGUF is already in B's store after the peer pull)
        config = b'{"model_format":"gguf","model_family":"llama"}'
        reg.add_model("library/slow:1", config, [(MODEL, slow_blob(weights))])
        reg.hf_files["someone/SmolLM2-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"] = weights
        reg.hf_files["someone/SmolLM2-GGUF/README.md"] = b"# hi"
        yield reg


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeRegistry
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with running_server(tmp_path_factory.mktemp("a")) as a:
        events = _pull(a, "smollm2:135m")
        assert events[-1] == {"status": "success"}, events[-3:]
        b = ServerProcess(tmp_path_factory.mktemp("b"), env={"HF_ENDPOINT": f"http://{fake.host}"}).start()
        try:
            yield a, b
        finally:
            b.stop()


def test_serve_creates_the_key_pair(pair: tuple[ServerProcess, ServerProcess]) -> None:
    _, b = pair
    assert (b.home / "id_ed25519").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "Generating new private key." in b.log_tail(100_000)


def test_b_pulls_from_a_byte_identical(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    name = f"127.0.0.1:{a.port}/library/smollm2:135m"
    started = time.monotonic()
    events = _pull(b, name)
    elapsed = time.monotonic() - started
    assert events[0] == {"status": "pulling manifest"}
    assert [e["status"] for e in events[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    assert any(str(e["status"]).startswith("pulling ") and e.get("total") for e in events)
    a_manifest = (a.home / "models/manifests/registry.ollama.ai/library/smollm2/135m").read_bytes()
    b_manifest = (b.home / f"models/manifests/127.0.0.1:{a.port}/library/smollm2/135m").read_bytes()
    assert a_manifest == b_manifest
    a_blobs, b_blobs = _blob_files(a.home), _blob_files(b.home)
    assert set(a_blobs) <= set(b_blobs)
    assert all(a_blobs[k] == b_blobs[k] for k in a_blobs)
    total = sum(len(v) for v in a_blobs.values())
    print(f"\nloopback pull: {total / elapsed / 1e6:.0f} MB/s ({total} bytes in {elapsed:.2f}s)")
    with httpx.Client(base_url=b.url, timeout=30, trust_env=False) as c:
        assert name in [m["name"] for m in c.get("/api/tags").json()["models"]]


def test_killed_pull_resumes(pair: tuple[ServerProcess, ServerProcess], fake: FakeRegistry, weights: bytes) -> None:
    _, b = pair
    weights = slow_blob(weights)
    name = f"{fake.host}/library/slow:1"
    fake.faults.chunk = 256 * 1024
    fake.faults.delay_per_chunk = 0.02  # ~12 MB/s
    fake.blob_bytes_sent = 0
    with httpx.Client(base_url=b.url, timeout=60, trust_env=False) as c, c.stream(
        "POST", "/api/pull", json={"model": name, "insecure": True}
    ) as r:
        for line in r.iter_lines():
            event = json.loads(line)
            if int(event.get("completed") or 0) > 20_000_000:
                break
    assert b.proc is not None
    os.killpg(b.proc.pid, signal.SIGKILL)
    b.proc.wait(timeout=10)
    first = fake.blob_bytes_sent
    partial = b.home / "models/blobs" / f"sha256-{digest_of(weights)[7:]}-partial"
    names = sorted(p.name for p in (b.home / "models/blobs").iterdir())
    assert partial.exists() and first < len(weights), (first, names)
    fake.faults.delay_per_chunk = 0.0
    fake.blob_bytes_sent = 0
    b.start()
    events = _pull(b, name)
    assert events[-1] == {"status": "success"}, events[-3:]
    assert fake.blob_bytes_sent < len(weights) - 15_000_000  # continued, did not start over
    blob = b.home / "models/blobs" / f"sha256-{digest_of(weights)[7:]}"
    assert blob.read_bytes() == weights
    assert not partial.exists()


def test_push_from_b_to_a(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    src = f"127.0.0.1:{a.port}/library/smollm2:135m"
    dst = f"127.0.0.1:{a.port}/team/smol:pushed"
    with httpx.Client(base_url=b.url, timeout=120, trust_env=False) as c:
        assert c.post("/api/copy", json={"source": src, "destination": dst}).status_code == 200
        r = c.post("/api/push", json={"model": dst, "insecure": True})
        statuses = [json.loads(line)["status"] for line in r.text.splitlines()]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    with httpx.Client(base_url=a.url, timeout=30, trust_env=False) as c:
        names = [m["name"] for m in c.get("/api/tags").json()["models"]]
    assert "team/smol:pushed" in names


def test_hf_pull(pair: tuple[ServerProcess, ServerProcess], weights: bytes) -> None:
    _, b = pair
    events = _pull(b, "hf.co/someone/SmolLM2-GGUF:Q4_1")
    assert events[-1] == {"status": "success"}, events[-3:]
    with httpx.Client(base_url=b.url, timeout=30, trust_env=False) as c:
        show = c.post("/api/show", json={"model": "hf.co/someone/SmolLM2-GGUF:Q4_1"}).json()
    assert show["details"]["format"] == "gguf"
    assert show.get("template")
    assert (b.home / "models/blobs" / f"sha256-{digest_of(weights)[7:]}").stat().st_size == len(weights)

"""A real `corral serve` as a pull-through mirror (CORRAL_REGISTRY_MIRROR_OF) of the fake registry
holding smollm2:135m, and two real corral servers pulling through it (CORRAL_REGISTRY_MIRROR)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.names import ModelName
from corral.registry.client import RegistryOptions, mirrors_from
from corral.registry.pull import pull_model
from corral.store.bundled import find_bundled, import_bundled
from corral.store.store import Store
from tests.registry_fake import FakeRegistry
from tests.support import ServerProcess, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRegistry]:
    """The fake registry serving smollm2:135m exactly as corral stores it (manifest and blobs)."""
    store = Store(tmp_path_factory.mktemp("seed"))
    name = ModelName.parse("smollm2:135m")
    assert find_bundled(name) is not None
    for _ in import_bundled(store, name):
        pass
    manifest, raw = store.read_manifest(name)
    with FakeRegistry() as reg:
        reg.manifests["library/smollm2:135m"] = raw
        for digest in manifest.digests():
            reg.blobs[digest] = store.blobs.path(digest).read_bytes()
        yield reg


def pull(server: ServerProcess, model: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=server.url, timeout=300, trust_env=False) as c:
        r = c.post("/api/pull", json={"model": model, "insecure": True, "stream": False})
        assert r.status_code == 200, r.text
        return [r.json()]


def test_two_servers_pull_through_a_mirror(upstream: FakeRegistry, tmp_path: Path) -> None:
    name = f"{upstream.host}/library/smollm2:135m"
    biggest = max(upstream.blobs, key=lambda d: len(upstream.blobs[d]))
    with running_server(tmp_path / "mirror", {"CORRAL_REGISTRY_MIRROR_OF": f"http://{upstream.host}"}) as mirror:
        env = {"CORRAL_REGISTRY_MIRROR": f"{upstream.host}=http://127.0.0.1:{mirror.port}"}
        with running_server(tmp_path / "a", env) as a, running_server(tmp_path / "b", env) as b:
            results: dict[str, Any] = {}
            threads = [threading.Thread(target=lambda s=s: results.__setitem__(s.url, pull(s, name)))
                       for s in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            assert [results[s.url][-1]["status"] for s in (a, b)] == ["success", "success"]
            for digest in upstream.blobs:  # each blob crossed from the upstream once
                transfers = [r for m, p, r in upstream.log if m == "GET" and p.endswith(digest) and r]
                assert len(transfers) == 1, (digest, transfers)
            with httpx.Client(base_url=a.url, timeout=120, trust_env=False) as c:
                r = c.post("/api/generate", json={"model": name, "prompt": "Hi", "stream": False,
                                                  "options": {"num_predict": 4}})
                assert r.status_code == 200 and r.json()["eval_count"] > 0, r.text
        # A second pull is served from the mirror's store: measure it (README "Scaling out").
        store = Store(tmp_path / "third")
        opts = RegistryOptions(insecure=True, mirrors=mirrors_from([(upstream.host, mirror.url)]))
        started = time.monotonic()
        statuses = [p.status for p in pull_model(store, ModelName.parse(name), opts)]
        seconds = time.monotonic() - started
        assert statuses[-1] == "success" and not any("failed" in s for s in statuses)
        size = len(upstream.blobs[biggest])
        print(f"\nsecond pull through the mirror: {size / 1e6:.0f} MB blob, "
              f"{sum(len(b) for b in upstream.blobs.values()) / seconds / 1e6:.0f} MB/s end to end")
        transfers = [r for m, p, r in upstream.log if m == "GET" and p.endswith(biggest) and r]
        assert len(transfers) == 1

"""Pull-through mirror (server side, in-process uvicorn on 127.0.0.1) and mirror-first pulls
(client side), with the fault-injecting fake registry as the upstream."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from corral.auth.keys import KEYS_FILE, KeyStore
from corral.config import Settings
from corral.errors import CorralError, NotFoundError
from corral.names import ModelName
from corral.registry.client import RegistryOptions, RetryPolicy, mirrors_from
from corral.registry.pull import pull_model
from corral.server.app import create_app
from corral.server.ops.mirror import parse_range
from corral.store.store import Store
from tests.registry_fake import FakeRegistry, digest_of
from tests.support import free_port

MODEL = "application/vnd.ollama.image.model"
CONFIG = b'{"model_format":"gguf","model_family":"llama"}'
WEIGHTS = os.urandom(3 * 1024 * 1024 + 17)
TEMPLATE = b"{{ .Prompt }}"
FAST = RetryPolicy(attempts=2, base=0.01)


@contextlib.contextmanager
def serve_mirror(tmp_path: Path, upstream: str) -> Iterator[tuple[str, Store]]:
    """A corral app with CORRAL_REGISTRY_MIRROR_OF=upstream, served by uvicorn on loopback."""
    cfg = Settings.model_validate({"home": tmp_path / "mirror-home", "models": tmp_path / "mirror-models",
                                   "noprune": True, "registry_mirror_of": upstream})
    store = Store(cfg.models_dir)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, store), host="127.0.0.1", port=port,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def upstream() -> Iterator[FakeRegistry]:
    with FakeRegistry() as reg:
        reg.add_model("library/tiny:latest", CONFIG, [(MODEL, WEIGHTS), ("application/vnd.ollama.image.template",
                                                                           TEMPLATE)])
        yield reg


def client_opts(reg: FakeRegistry, mirror_url: str) -> RegistryOptions:
    return RegistryOptions(insecure=True, retry=FAST, mirrors=mirrors_from([(reg.host, mirror_url)]))


def ranged_gets(reg: FakeRegistry, digest: str) -> int:
    """Upstream blob transfers: GETs of the blob that asked for bytes (not the redirect probe)."""
    return sum(1 for m, path, rng in reg.log if m == "GET" and path.endswith(digest) and rng)


def pull(store: Store, name: str, opts: RegistryOptions) -> list[str]:
    return [p.status for p in pull_model(store, ModelName.parse(name), opts)]


def wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_clients_pull_through_mirror_and_upstream_sees_each_blob_once(
    upstream: FakeRegistry, tmp_path: Path
) -> None:
    upstream.faults.delay_per_chunk = 0.005  # the two pulls overlap the mirror's download
    name = f"{upstream.host}/library/tiny:latest"
    with serve_mirror(tmp_path, f"http://{upstream.host}") as (url, mirror_store):
        stores = [Store(tmp_path / f"client{i}") for i in range(2)]
        results: dict[int, list[str] | BaseException] = {}

        def one(i: int) -> None:
            try:
                results[i] = pull(stores[i], name, client_opts(upstream, url))
            except BaseException as e:
                results[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for i in range(2):
            statuses = results[i]
            assert isinstance(statuses, list), statuses
            assert statuses[-1] == "success" and not any("mirror" in s for s in statuses)
            assert stores[i].blobs.path(digest_of(WEIGHTS)).read_bytes() == WEIGHTS
            assert stores[i].exists(ModelName.parse(name))
        for blob in (CONFIG, WEIGHTS, TEMPLATE):
            assert ranged_gets(upstream, digest_of(blob)) == 1, upstream.log
        # The mirror keeps the model: later pulls are served from its store, upstream or not.
        wait_for(lambda: mirror_store.exists(ModelName.parse(name)))
        upstream.__exit__()
        later = Store(tmp_path / "client-late")
        assert pull(later, name, client_opts(upstream, url))[-1] == "success"
        assert later.blobs.path(digest_of(WEIGHTS)).read_bytes() == WEIGHTS


def test_blob_streams_while_downloading_and_concurrent_requests_share_it(
    upstream: FakeRegistry, tmp_path: Path
) -> None:
    upstream.faults.chunk = 16 * 1024
    upstream.faults.delay_per_chunk = 0.004  # ~0.8 s for the whole blob
    digest = digest_of(WEIGHTS)
    with serve_mirror(tmp_path, f"http://{upstream.host}") as (url, store), httpx.Client(
        base_url=url, trust_env=False, timeout=60
    ) as c:
        blob_url = f"/v2/library/tiny/blobs/{digest}"
        with c.stream("GET", blob_url) as first:
            assert first.status_code == 200
            assert first.headers["content-length"] == str(len(WEIGHTS))
            chunks = first.iter_raw()
            head = next(chunks)
            assert head and upstream.blob_bytes_sent < len(WEIGHTS)  # served before fully fetched
            second = c.get(blob_url, headers={"Range": "bytes=100-"})
            body = head + b"".join(chunks)
        assert body == WEIGHTS
        assert second.status_code == 206 and second.content == WEIGHTS[100:]
        assert second.headers["content-range"] == f"bytes 100-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
        assert ranged_gets(upstream, digest) == 1
        assert store.blobs.path(digest).read_bytes() == WEIGHTS
        again = c.get(blob_url, headers={"Range": "bytes=0-9"})  # now from the store
        assert again.status_code == 206 and again.content == WEIGHTS[:10]
        assert ranged_gets(upstream, digest) == 1


def test_corrupt_upstream_blob_is_refused_and_never_served(upstream: FakeRegistry, tmp_path: Path) -> None:
    digest = digest_of(WEIGHTS)
    upstream.faults.corrupt.add(digest)
    name = f"{upstream.host}/library/tiny:latest"
    with serve_mirror(tmp_path, f"http://{upstream.host}") as (url, store), httpx.Client(
        base_url=url, trust_env=False, timeout=60
    ) as c:
        for _ in range(2):  # a second request fetches again and is refused again
            with pytest.raises(httpx.RemoteProtocolError):  # cut short: never a complete response
                c.get(f"/v2/library/tiny/blobs/{digest}")
            assert not store.blobs.exists(digest)
        client = Store(tmp_path / "client")
        with pytest.raises(CorralError, match="digest mismatch"):  # mirror refuses; the upstream is bad too
            pull(client, name, client_opts(upstream, url))
        assert not client.blobs.exists(digest) and not client.exists(ModelName.parse(name))
        assert not store.blobs.exists(digest)
        assert not [f for f in store.blobs.list_names() if f.endswith("-partial")]


def test_mirror_resumes_a_dropped_upstream_transfer(upstream: FakeRegistry, tmp_path: Path) -> None:
    digest = digest_of(WEIGHTS)
    upstream.faults.drop_after[digest] = 1_000_000
    with serve_mirror(tmp_path, f"http://{upstream.host}") as (url, store), httpx.Client(
        base_url=url, trust_env=False, timeout=60
    ) as c:
        r = c.get(f"/v2/library/tiny/blobs/{digest}")
        assert r.status_code == 200 and r.content == WEIGHTS
        assert store.blobs.path(digest).read_bytes() == WEIGHTS  # committed before the last byte left
    ranges = [rng for m, path, rng in upstream.log if m == "GET" and path.endswith(digest) and rng]
    assert ranges[0].startswith("bytes=0-") and ranges[1].startswith("bytes=1000000-"), ranges


def test_head_and_unknown_names_on_the_mirror(upstream: FakeRegistry, tmp_path: Path) -> None:
    digest = digest_of(WEIGHTS)
    with serve_mirror(tmp_path, f"http://{upstream.host}") as (url, store), httpx.Client(
        base_url=url, trust_env=False, timeout=30
    ) as c:
        h = c.head(f"/v2/library/tiny/blobs/{digest}")
        assert h.status_code == 200 and h.headers["content-length"] == str(len(WEIGHTS))
        m = c.head("/v2/library/tiny/manifests/latest")
        assert m.status_code == 200 and int(m.headers["content-length"]) > 0
        assert c.get("/v2/library/nope/manifests/latest").status_code == 404
        assert c.get(f"/v2/library/tiny/blobs/sha256:{'0' * 64}").status_code == 404
        assert c.get("/v2/library/tiny/blobs/sha256:xyz").status_code == 400
    assert ranged_gets(upstream, digest) == 0 and not store.blobs.exists(digest)
    assert not store.exists(ModelName.parse(f"{upstream.host}/library/tiny:latest"))  # HEAD starts no pull


def test_pull_falls_back_to_upstream_when_the_mirror_is_down(upstream: FakeRegistry, tmp_path: Path) -> None:
    store = Store(tmp_path / "client")
    statuses = pull(store, f"{upstream.host}/library/tiny:latest",
                    client_opts(upstream, f"http://127.0.0.1:{free_port()}"))
    assert statuses[-1] == "success"
    assert any(s.startswith("mirror http://127.0.0.1:") and "failed" in s for s in statuses)
    assert store.blobs.path(digest_of(WEIGHTS)).read_bytes() == WEIGHTS


def test_a_mirror_with_auth_on_needs_the_mirror_key(upstream: FakeRegistry, tmp_path: Path) -> None:
    _, key = KeyStore(tmp_path / "mirror-home" / KEYS_FILE).create("read", name="pullers")
    name = f"{upstream.host}/library/tiny:latest"
    with serve_mirror(tmp_path, f"http://{upstream.host}") as (url, _):
        keyless = pull(Store(tmp_path / "keyless"), name, client_opts(upstream, url))
        assert any(s.startswith(f"mirror {url} failed (unauthorized") for s in keyless), keyless
        assert keyless[-1] == "success"  # from the upstream instead
        opts = RegistryOptions(insecure=True, retry=FAST, mirrors=mirrors_from([(upstream.host, url)], key))
        keyed = pull(Store(tmp_path / "keyed"), name, opts)
        assert keyed[-1] == "success" and not any("failed" in s for s in keyed), keyed


def test_model_missing_upstream_is_not_found_through_the_mirror(upstream: FakeRegistry, tmp_path: Path) -> None:
    with serve_mirror(tmp_path, f"http://{upstream.host}") as (url, _):
        with pytest.raises(NotFoundError):
            pull(Store(tmp_path / "client"), f"{upstream.host}/library/absent:latest", client_opts(upstream, url))
    assert upstream.requests("GET", "/v2/library/absent/manifests/latest")


def test_mirror_settings_select_mirrors_by_upstream_host() -> None:
    cfg = Settings.from_env({"CORRAL_REGISTRY_MIRROR": "http://m1:8080/, 127.0.0.1:5000=https://m2",
                             "CORRAL_REGISTRY_MIRROR_KEY": "crl_a_b",
                             "CORRAL_REGISTRY_MIRROR_OF": "https://registry.ollama.ai/"})
    assert cfg.registry_mirror_of == "https://registry.ollama.ai"
    opts = RegistryOptions(mirrors=mirrors_from(cfg.registry_mirrors, cfg.registry_mirror_key))
    (default,) = opts.mirrors_for(ModelName.parse("smollm2:135m"))
    assert (default.url, default.key) == ("http://m1:8080", "crl_a_b")
    assert default.source(ModelName.parse("smollm2:135m")).display_long().startswith("m1:8080/library/smollm2")
    assert default.options(opts).insecure and default.options(opts).mirrors == ()
    (local,) = opts.mirrors_for(ModelName.parse("127.0.0.1:5000/library/tiny"))
    assert local.url == "https://m2" and not local.options(opts).insecure
    assert opts.mirrors_for(ModelName.parse("example.com/x/y")) == []
    for bad in ("m1:8080", "ftp://m", "http://m/path", "h=notaurl"):
        with pytest.raises(ValueError):
            Settings.from_env({"CORRAL_REGISTRY_MIRROR": bad})
    with pytest.raises(ValueError):
        Settings.from_env({"CORRAL_REGISTRY_MIRROR_OF": "registry.ollama.ai"})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (0, 99, False)),
        ("bytes=10-19", (10, 19, True)),
        ("bytes=10-", (10, 99, True)),
        ("bytes=90-500", (90, 99, True)),
        ("bytes=-5", (95, 99, True)),
        ("bytes=100-", None),
        ("bytes=20-10", None),
        ("bytes=-0", None),
        ("items=1-2", (0, 99, False)),
        ("bytes=1-2,5-6", (0, 99, False)),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int, bool] | None) -> None:
    assert parse_range(header, 100) == expected

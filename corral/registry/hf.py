"""`hf.co/<user>/<repo>[:<quant>]` pulls from a Hugging Face compatible endpoint.

Owns listing a repo's files (`GET <endpoint>/api/models/<repo>/tree/main`), choosing the GGUF
for the quant tag (default Q4_K_M, else the first GGUF), a resumable download of
`<endpoint>/<repo>/resolve/main/<file>` into `blobs/sha256-<oid>-partial` (Range continues
an interrupted file; the LFS sha256 is verified before use), and building the model through
`corral.store.create` (template autodetected). The endpoint is a parameter, never read here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from corral.errors import CorralError, DigestMismatchError, NotFoundError
from corral.fsutil import fsync_dir
from corral.names import ModelName
from corral.registry.client import USER_AGENT, RetryPolicy
from corral.schemas.native import CreateRequest, ProgressResponse
from corral.store.create import create_model
from corral.store.store import Store

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"
HF_HOSTS = frozenset({"hf.co", "huggingface.co"})


def is_hf_name(name: ModelName) -> bool:
    return name.host.lower() in HF_HOSTS


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None


def list_files(http: httpx.Client, endpoint: str, repo: str) -> list[RepoFile]:
    resp = http.get(f"{endpoint}/api/models/{repo}/tree/main", params={"recursive": "true"})
    if resp.status_code in (401, 404):
        raise NotFoundError(f"pull model manifest: repository {repo} not found")
    if resp.status_code != 200:
        raise CorralError(f"listing {repo}: endpoint returned {resp.status_code}")
    files = []
    for item in resp.json():
        if not isinstance(item, dict) or item.get("type") != "file":
            continue
        lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else {}
        oid = lfs.get("oid") if lfs else None
        sha = oid if isinstance(oid, str) else None
        files.append(RepoFile(str(item["path"]), int(item.get("size", 0)), sha))
    return files


def choose_gguf(files: list[RepoFile], tag: str) -> RepoFile:
    """The GGUF whose name contains the quant tag; default Q4_K_M, else the first GGUF."""
    ggufs = sorted((f for f in files if f.path.lower().endswith(".gguf")), key=lambda f: f.path)
    if not ggufs:
        raise NotFoundError("pull model manifest: no GGUF files in the repository")
    explicit = tag.lower() != "latest"
    quant = (tag if explicit else DEFAULT_QUANT).lower()
    for f in ggufs:
        if quant in Path(f.path).name.lower():
            return f
    if explicit:
        raise NotFoundError(f"pull model manifest: no GGUF file for quantization {tag}")
    return ggufs[0]


def pull_hf(
    store: Store,
    name: ModelName,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    retry: RetryPolicy | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Iterator[ProgressResponse]:
    """Download the chosen GGUF with resume and create the model `name` from it."""
    endpoint = endpoint.rstrip("/")
    repo = f"{name.namespace}/{name.model}"
    yield ProgressResponse(status="pulling manifest")
    with httpx.Client(
        timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True, trust_env=False,
        transport=transport, headers={"User-Agent": USER_AGENT},
    ) as http:
        chosen = choose_gguf(list_files(http, endpoint, repo), name.tag)
        url = f"{endpoint}/{repo}/resolve/main/{quote(chosen.path)}"
        with store.pinning() as pin:
            digest = yield from _download(store, http, url, chosen, retry or RetryPolicy())
            pin(digest)
            req = CreateRequest.model_validate({"files": {Path(chosen.path).name: digest}})
            yield from create_model(store, name, req)


def _download(
    store: Store, http: httpx.Client, url: str, f: RepoFile, retry: RetryPolicy
) -> Generator[ProgressResponse, None, str]:
    key = f.sha256 or hashlib.sha256(url.encode()).hexdigest()
    final_digest = f"sha256:{f.sha256}" if f.sha256 else None
    status = f"pulling {key[:12]}"
    if final_digest and store.blobs.exists(final_digest):
        yield ProgressResponse(status=status, digest=final_digest, total=f.size, completed=f.size)
        return final_digest
    store.blobs.ensure_dir()
    partial = store.blobs.root / f"sha256-{key}-partial"
    for attempt in range(retry.attempts):
        try:
            yield from _fetch(http, url, partial, f, status, final_digest)
            break
        except (httpx.TransportError, _ShortRead) as e:
            if attempt == retry.attempts - 1:
                raise CorralError(f"download {f.path}: {e}") from e
            retry.sleep(attempt)
    yield ProgressResponse(status="verifying sha256 digest")
    return _commit(store, partial, final_digest)


class _ShortRead(Exception):
    pass


def _fetch(
    http: httpx.Client, url: str, partial: Path, f: RepoFile, status: str, digest: str | None
) -> Iterator[ProgressResponse]:
    have = partial.stat().st_size if partial.exists() else 0
    if f.size and have >= f.size:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as resp:
        if resp.status_code == 200:
            have = 0
        elif resp.status_code != 206:
            raise CorralError(f"download {f.path}: endpoint returned {resp.status_code}")
        with open(partial, "r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            for chunk in resp.iter_raw(1 << 20):
                out.write(chunk)
                have += len(chunk)
                yield ProgressResponse(status=status, digest=digest, total=f.size, completed=have)
    if f.size and have < f.size:
        raise _ShortRead("unexpected end of data")


def _commit(store: Store, partial: Path, digest: str | None) -> str:
    if digest is None:
        got, _ = store.blobs.add_file(partial)
        partial.unlink()
        return got
    h = hashlib.sha256()
    with open(partial, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    got = "sha256:" + h.hexdigest()
    if got != digest:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise DigestMismatchError(f"digest mismatch, want {digest}, got {got}")
    os.chmod(partial, 0o644)
    os.replace(partial, store.blobs.path(digest))
    fsync_dir(store.blobs.root)
    return digest

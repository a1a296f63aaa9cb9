"""The corral HTTP client: a thin SDK over httpx, used by the CLI (and usable by anyone).

It speaks the native API with the shared wire schemas and turns error bodies back into the
same `CorralError` classes the server raised. Streams are iterated lazily; closing the iterator
closes the HTTP response, which the server treats as a cancellation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from corral.errors import ConnectError, CorralError, error_from_status, retry_after_seconds
from corral.schemas.native import (
    ChatRequest,
    ChatResponse,
    CreateRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ProgressResponse,
    ShowResponse,
)

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=5.0)

__all__ = ["DEFAULT_TIMEOUT", "Client", "ConnectError", "file_digest"]


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    response.read()
    message = response.text or response.reason_phrase
    try:
        body = response.json()
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                message = str(err.get("message", message))
            elif err is not None:
                message = str(err)
    except (json.JSONDecodeError, ValueError):
        pass
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    raise error_from_status(response.status_code, message, retry_after)


def _body(request: BaseModel | dict[str, Any]) -> dict[str, Any]:
    if isinstance(request, BaseModel):  # the fields the caller set, as the wire spells them
        return request.model_dump(mode="json", exclude_none=True, exclude_unset=True, by_alias=True)
    return request


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()


class Client:
    """Synchronous client for a corral (or Ollama) server."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:11434",
        *,
        api_key: str | None = None,
        verify: bool | str = True,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "corral-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            transport=transport,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ConnectError(f"could not connect to corral server at {self.base_url}: {exc}") from exc
        _raise_for(response)
        return response

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream("POST", path, json=body) as response:
                _raise_for(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if isinstance(item, dict) and "error" in item and len(item) == 1:
                        raise CorralError(str(item["error"]))
                    yield item
        except httpx.ConnectError as exc:
            raise ConnectError(f"could not connect to corral server at {self.base_url}: {exc}") from exc

    # server ----------------------------------------------------------------------------------
    def heartbeat(self) -> bool:
        try:
            self._request("HEAD", "/")
        except ConnectError:
            return False
        return True

    def version(self) -> str:
        return str(self._request("GET", "/api/version").json()["version"])

    # models ----------------------------------------------------------------------------------
    def list(self) -> ListResponse:
        return ListResponse.model_validate(self._request("GET", "/api/tags").json())

    def show(self, model: str, *, verbose: bool = False) -> ShowResponse:
        body = {"model": model, "verbose": verbose}
        return ShowResponse.model_validate(self._request("POST", "/api/show", json=body).json())

    def copy(self, source: str, destination: str) -> None:
        self._request("POST", "/api/copy", json={"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self._request("DELETE", "/api/delete", json={"model": model})

    def blob_exists(self, digest: str) -> bool:
        try:
            self._request("HEAD", f"/api/blobs/{digest}")
        except CorralError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def upload_blob(
        self, path: Path, digest: str | None = None, progress: Callable[[int, int], None] | None = None
    ) -> str:
        """Upload a local file as a blob unless the server has it; returns its digest."""
        digest = digest or file_digest(path)
        if self.blob_exists(digest):
            if progress:
                size = path.stat().st_size
                progress(size, size)
            return digest
        total = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    sent += len(block)
                    if progress:
                        progress(sent, total)
                    yield block

        self._request("POST", f"/api/blobs/{digest}", content=chunks())
        return digest

    def create(self, request: CreateRequest) -> Iterator[ProgressResponse]:
        body = request.model_dump(mode="json", exclude_none=True, by_alias=True)
        for item in self._stream("/api/create", body):
            yield ProgressResponse.model_validate(item)

    def pull(self, model: str, *, insecure: bool = False) -> Iterator[ProgressResponse]:
        for item in self._stream("/api/pull", {"model": model, "insecure": insecure}):
            yield ProgressResponse.model_validate(item)

    def push(self, model: str, *, insecure: bool = False) -> Iterator[ProgressResponse]:
        for item in self._stream("/api/push", {"model": model, "insecure": insecure}):
            yield ProgressResponse.model_validate(item)

    # inference -------------------------------------------------------------------------------
    def generate(self, body: GenerateRequest | dict[str, Any]) -> Iterator[GenerateResponse]:
        """Stream `/api/generate` chunks as `GenerateResponse`s (attribute or key access, as the
        official ollama client's; `.dump()` gives the JSON object the server sent)."""
        for item in self._stream("/api/generate", {**_body(body), "stream": True}):
            yield GenerateResponse.model_validate(item)

    def chat(self, body: ChatRequest | dict[str, Any]) -> Iterator[ChatResponse]:
        """Stream `/api/chat` chunks as `ChatResponse`s."""
        for item in self._stream("/api/chat", {**_body(body), "stream": True}):
            yield ChatResponse.model_validate(item)

    def embed(self, body: dict[str, Any]) -> EmbedResponse:
        return EmbedResponse.model_validate(self._request("POST", "/api/embed", json=body).json())

    def ps(self) -> ProcessResponse:
        return ProcessResponse.model_validate(self._request("GET", "/api/ps").json())

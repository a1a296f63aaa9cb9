"""An OCI distribution client over httpx (spec §7): manifests, blobs, uploads, auth retries.

Owns URL building for a `ModelName`, the `http` only-with-insecure rule, the 401 -> token ->
one-retry flow, retries with exponential backoff for connection errors and 5xx, resolving a
blob's direct URL without following cross-host redirects, and which registry mirror stands in for
which registry host (`Mirror`). Does not touch the store.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from corral import __version__
from corral.errors import CorralError, NotFoundError, UnauthorizedError
from corral.names import DEFAULT_HOST, ModelName
from corral.registry.auth import Credentials, KeyPair, fetch_token, parse_challenge

log = logging.getLogger(__name__)
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
USER_AGENT = f"corral/{__version__} (python)"


class RetryableError(CorralError):
    """A transient failure (connection drop, 5xx, short read): worth another try."""


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries with `base * 2**n` seconds between them (Ollama: 6 tries, 1 s base)."""

    attempts: int = 6
    base: float = 1.0
    max_sleep: float = 30.0

    def sleep(self, attempt: int) -> None:
        time.sleep(min(self.max_sleep, self.base * (2**attempt)))


# A mirror that does not answer is given up quickly: the upstream is still there to fall back on.
MIRROR_RETRY = RetryPolicy(attempts=2, base=0.5)


@dataclass(frozen=True)
class Mirror:
    """A registry that serves pulls for `upstream` (a registry host) from `url` (`http(s)://host`),
    as a Docker registry mirror does: same repositories, same manifests, same blobs."""

    upstream: str
    url: str
    key: str | None = None

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0]

    @property
    def host(self) -> str:
        return self.url.partition("://")[2].rstrip("/")

    def source(self, name: ModelName) -> ModelName:
        """`name` as this mirror addresses it (its host, its scheme; same repository and tag)."""
        return dataclasses.replace(name, host=self.host, scheme=self.scheme)

    def options(self, opts: RegistryOptions) -> RegistryOptions:
        """`opts` for talking to the mirror: its own credentials, quick retries, no mirrors of mirrors."""
        creds = {self.host: Credentials(token=self.key)} if self.key else {}
        return dataclasses.replace(
            opts, insecure=self.scheme == "http", credentials=creds, retry=MIRROR_RETRY, mirrors=()
        )


def mirrors_from(pairs: Iterable[tuple[str, str]], key: str | None = None) -> tuple[Mirror, ...]:
    """`(upstream host or "", url)` pairs (Settings.registry_mirrors) -> mirrors; "" is the default host."""
    return tuple(Mirror((host or DEFAULT_HOST).lower(), url.rstrip("/"), key) for host, url in pairs)


@dataclass
class RegistryOptions:
    """Everything a registry conversation needs besides the name (all explicit, no env)."""

    insecure: bool = False
    keypair: KeyPair | None = None
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 30.0
    transport: httpx.BaseTransport | None = None
    mirrors: tuple[Mirror, ...] = ()

    def mirrors_for(self, name: ModelName) -> list[Mirror]:
        """The mirrors to try, in order, before `name`'s own registry."""
        return [m for m in self.mirrors if m.upstream == name.host.lower()]


def base_url(name: ModelName, insecure: bool) -> str:
    """`http` needs `insecure`; with `insecure`, https names talk plain http (Ollama's makeRequest)."""
    if name.scheme == "http" and not insecure:
        raise CorralError("insecure protocol http")
    return f"{'http' if insecure else name.scheme}://{name.host}"


class RegistryClient:
    """One registry host; thread-safe (httpx.Client is), the bearer token is shared."""

    def __init__(self, name: ModelName, opts: RegistryOptions) -> None:
        self.name = name
        self.opts = opts
        self.base = base_url(name, opts.insecure)
        self.host = name.host
        self.repo = f"{name.namespace}/{name.model}"
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self.http = httpx.Client(
            timeout=httpx.Timeout(opts.timeout, connect=10.0),
            follow_redirects=False,
            trust_env=False,
            transport=opts.transport,
            headers={"User-Agent": USER_AGENT},
            verify=True,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # URLs ------------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repo}/{path}"

    def manifest_url(self, tag: str | None = None) -> str:
        return self.url(f"manifests/{tag or self.name.tag}")

    def blob_url(self, digest: str) -> str:
        return self.url(f"blobs/{digest}")

    # Requests --------------------------------------------------------------------------------
    def _auth_header(self) -> dict[str, str]:
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        cred = self.opts.credentials.get(self.host)
        value = cred.header() if cred else None
        return {"Authorization": value} if value else {}

    def _handle_401(self, resp: httpx.Response) -> None:
        ch = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if ch is None:
            raise UnauthorizedError("unauthorized: registry rejected the credentials")
        with self._token_lock:
            self._token = fetch_token(self.http, ch, urlsplit(self.base).netloc, self.opts.keypair)

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One request with the token flow (one retry after 401); no 5xx retry here."""
        for attempt in range(2):
            req = self.http.build_request(
                method, url, headers={**self._auth_header(), **(headers or {})}, content=content
            )
            try:
                resp = self.http.send(req, stream=stream)
            except httpx.TransportError as e:
                raise RetryableError(f"{method} {url}: {e or type(e).__name__}") from e
            if resp.status_code == 401 and attempt == 0:
                resp.close()
                self._handle_401(resp)
                continue
            if resp.status_code == 401:
                resp.close()
                raise UnauthorizedError("unauthorized: registry rejected the token")
            if resp.status_code >= 500:
                resp.close()
                raise RetryableError(f"{method} {url}: registry returned {resp.status_code}")
            return resp
        raise UnauthorizedError("unauthorized")  # pragma: no cover - loop always returns

    def with_retries(self, what: str, fn: Callable[[], httpx.Response]) -> httpx.Response:
        """Call `fn` until it does not raise RetryableError, backing off between tries."""
        policy = self.opts.retry
        for attempt in range(policy.attempts):
            try:
                return fn()
            except RetryableError as e:
                if attempt == policy.attempts - 1:
                    raise CorralError(f"{what}: {e.message}") from e
                log.info("%s: %s; retrying", what, e.message)
                policy.sleep(attempt)
        raise CorralError(what)  # pragma: no cover

    # Operations ------------------------------------------------------------------------------
    def get_manifest(self) -> bytes:
        def go() -> httpx.Response:
            return self.send("GET", self.manifest_url(), headers={"Accept": MANIFEST_V2})

        resp = self.with_retries("pull model manifest", go)
        if resp.status_code == 404:
            raise NotFoundError("pull model manifest: file does not exist")
        if resp.status_code != 200:
            raise CorralError(f"pull model manifest: registry returned {resp.status_code}: {_short(resp)}")
        return resp.content

    def head_blob(self, digest: str) -> int | None:
        """The blob's Content-Length, or None if the registry does not have it."""
        resp = self.with_retries(f"blob {digest}", lambda: self.send("HEAD", self.blob_url(digest)))
        if resp.status_code == 404:
            return None
        if resp.status_code >= 300 and resp.status_code < 400:
            # Follow same-host redirects for HEAD (the direct URL is resolved separately).
            return self._head_follow(resp)
        if resp.status_code != 200:
            raise CorralError(f"blob {digest}: registry returned {resp.status_code}")
        return int(resp.headers.get("Content-Length", "-1"))

    def _head_follow(self, resp: httpx.Response) -> int | None:
        loc = urljoin(str(resp.url), resp.headers.get("Location", ""))
        r = self.with_retries("blob", lambda: self.send("HEAD", loc))
        return int(r.headers.get("Content-Length", "-1")) if r.status_code == 200 else None

    def direct_url(self, digest: str) -> str:
        """GET the blob without following a cross-host redirect: the Location (CDN) or the blob URL.

        Same-host redirects are followed (up to 10), as Ollama's CheckRedirect does.
        """
        url: str = self.blob_url(digest)
        for _ in range(10):
            resp = self.with_retries(f"blob {digest}", functools.partial(self.send, "GET", url, stream=True))
            resp.close()
            if resp.status_code in (301, 302, 303, 307, 308):
                url = urljoin(url, resp.headers.get("Location", ""))
                if urlsplit(url).netloc != urlsplit(self.base).netloc:
                    return url
                continue
            if resp.status_code == 404:
                raise NotFoundError(f"blob {digest} not found in the registry")
            return url
        raise CorralError("stopped after 10 redirects")


def _short(resp: httpx.Response) -> str:
    try:
        return resp.text[:200]
    except Exception:  # a body that cannot be decoded is not the error here
        return ""

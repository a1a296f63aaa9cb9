"""The collaborators a running server holds, typed and injected (no module globals, no string keys).

`Services` are built by the composition root (`corral.cli.serve`) from the settings and passed to
`create_app`; a test passes its own (fakes included). `AppContext` adds what the app builds for
itself while wiring routes (the registry hooks, upload sessions, the mirror's upstream).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, Request

from corral.auth.authenticator import Authenticator
from corral.auth.jwt import JWTVerifier
from corral.auth.keys import KEYS_FILE, KeyStore
from corral.config import Settings
from corral.gguf import GGUFInfo, read_gguf
from corral.names import ModelName
from corral.registry.auth import KeyPair
from corral.registry.mirror import PullThrough
from corral.schemas.native import ProgressResponse
from corral.server.native.uploads import UploadSessions
from corral.server.ops.cors import CorsPolicy, HostPolicy
from corral.server.ops.limits import RateLimiter
from corral.server.ops.metrics import ServerMetrics, current_key_id
from corral.store.store import Store

if TYPE_CHECKING:
    from corral.engine.base import Metrics
    from corral.scheduler import Scheduler


class GGUFCache:
    """Parsed GGUF metadata by blob path (blobs are immutable, so entries never go stale)."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._items: OrderedDict[Path, GGUFInfo] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> GGUFInfo:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        info = read_gguf(path)
        with self._lock:
            self._items[path] = info
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return info


class RegistryPull(Protocol):
    """`/api/pull`'s hook into the registry client (set by `install_registry`)."""

    def __call__(self, name: ModelName, *, insecure: bool) -> AsyncIterator[ProgressResponse]: ...


@dataclass
class Services:
    """What the composition root builds for the server: authentication, rate limits, metrics and the
    registry identity. `from_settings` is what `corral serve` uses."""

    auth: Authenticator
    keys: KeyStore
    limiter: RateLimiter
    metrics: ServerMetrics
    registry_keypair: KeyPair | None = None  # None: read from the home directory when needed
    hf_endpoint: str | None = None  # Hugging Face pulls (HF_ENDPOINT); None: huggingface.co

    @classmethod
    def from_settings(cls, s: Settings, *, registry_keypair: KeyPair | None = None,
                      hf_endpoint: str | None = None) -> Services:
        keys = KeyStore(s.home / KEYS_FILE)
        verifier = JWTVerifier.create(secret=s.jwt_secret, public_key_path=s.jwt_public_key,
                                      audience=s.jwt_audience, issuer=s.jwt_issuer, scope_claim=s.jwt_scope_claim)
        return cls(auth=Authenticator(keys, verifier), keys=keys,
                   limiter=RateLimiter(s.rate_limit_rpm, s.rate_limit_tpm), metrics=ServerMetrics(),
                   registry_keypair=registry_keypair, hf_endpoint=hf_endpoint)


@dataclass
class AppContext:
    settings: Settings
    store: Store
    services: Services
    scheduler: Scheduler | None = None
    gguf: GGUFCache = field(default_factory=GGUFCache)
    hosts: HostPolicy = field(init=False)  # DNS-rebinding check (HTTP and /api/ws alike)
    cors: CorsPolicy = field(init=False)
    registry_pull: RegistryPull | None = None  # set by install_registry
    uploads: UploadSessions | None = None  # push sessions, set by install_registry
    pull_through: PullThrough | None = None  # the upstream, set by install_mirror when mirroring

    def __post_init__(self) -> None:
        self.hosts = HostPolicy(loopback=self.settings.host_url.is_loopback)
        self.cors = CorsPolicy(self.settings.origin_list)

    def record_generation(self, model: str, m: Metrics | None, started_ns: int, load_ns: int) -> None:
        """Final-chunk hook for the inference routes: metrics plus the rate limiter's token count.

        Time to first token is taken as total time minus decode time (queue + load + prompt eval).
        """
        if m is None:
            return
        total_ns = time.monotonic_ns() - started_ns
        self.services.metrics.observe_generation(
            model,
            ttft_s=max(0, total_ns - m.eval_duration) / 1e9,
            prompt_tokens=m.prompt_eval_count - m.prompt_cache_count,
            cache_tokens=m.prompt_cache_count,
            eval_tokens=m.eval_count,
            eval_duration_s=m.eval_duration / 1e9,
            load_s=load_ns / 1e9,
        )
        self.services.limiter.count_tokens(current_key_id.get(), m.prompt_eval_count + m.eval_count)


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]

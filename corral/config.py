"""Settings: every `CORRAL_*` variable, read once at the edge (CLI / server start) and passed down.

Nothing below the CLI and `server.app` reads the environment. Names map one-to-one onto Ollama's
`OLLAMA_*` variables (README "Configuration"); values are trimmed of spaces and quotes, and booleans
follow Go's `strconv.ParseBool` with Ollama's rule that any other non-empty value means true.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.durations import env_duration_seconds

DEFAULT_PORT = 11434
DEFAULT_CONTEXT_LENGTH = 4096
_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}


def parse_env_bool(value: object) -> bool:
    """Go ParseBool semantics, with Ollama's "unparseable non-empty means true"."""
    if isinstance(value, bool):
        return value
    text = str(value or "").strip().strip("\"'").lower()
    if not text or text in _FALSE:
        return False
    return True


@dataclass(frozen=True)
class HostURL:
    """A parsed `CORRAL_HOST`: where the server binds and where the client connects."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def url(self) -> str:
        host = self.host or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def bind_host(self) -> str:
        return self.host or "0.0.0.0"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def parse(cls, text: str) -> HostURL:
        """Parse `[scheme://]host[:port][/path]` as Ollama's envconfig.Host does."""
        s = text.strip().strip("\"'")
        default_port = DEFAULT_PORT
        scheme, sep, hostport = s.partition("://")
        if not sep:
            scheme, hostport = "http", s
        elif scheme == "http":
            default_port = 80
        elif scheme == "https":
            default_port = 443
        hostport, slash, path = hostport.partition("/")
        host, port = _split_host_port(hostport)
        if port is None:
            port = default_port
            host = hostport.strip("[]") or "127.0.0.1"
        if not 0 <= port <= 65535:
            return cls("http", "127.0.0.1", DEFAULT_PORT)
        return cls(scheme or "http", host, port, (slash + path).rstrip("/") if path else "")


def _split_host_port(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end > 0 and hostport[end + 1 : end + 2] == ":":
            try:
                return hostport[1:end], int(hostport[end + 2 :])
            except ValueError:
                return "", None
        return "", None
    if hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
        try:
            return host, int(port)
        except ValueError:
            return "", None
    return "", None


class Settings(BaseModel):
    """All configuration. Build with `Settings.from_env()` at the edge, or directly in tests.

    A plain pydantic model rather than pydantic-settings' BaseSettings: `from_env` is the one
    place the environment is read, so a Settings built in a test never picks up stray variables.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    host: str = Field("127.0.0.1:11434", description="bind address / client URL (OLLAMA_HOST)")
    home: Path = Field(Path("~/.corral"), description="keys, logs, history, registry key")
    models: Path | None = Field(None, description="model store root; default $CORRAL_HOME/models")
    keep_alive: str = Field("5m", description="default keep-alive (Go duration or seconds)")
    load_timeout: str = Field("5m", description="stall timeout while loading a model")
    num_parallel: int = Field(4, ge=1, description="parallel sequences per loaded model")
    max_loaded_models: int = Field(0, ge=0, description="0 = auto (3)")
    max_queue: int = Field(512, ge=1, description="pending requests before 503")
    context_length: int = Field(0, ge=0, description="default num_ctx; 0 = 4096")
    num_thread: int = Field(0, ge=0, description="threads per runner; 0 = all cores")
    debug: int = Field(0, description="1 = debug logs, 2 = trace")
    noprune: bool = Field(False, description="skip pruning unreferenced blobs at start")
    nohistory: bool = Field(False, description="no REPL history")
    origins: str = Field("", description="extra CORS origins, comma separated")
    flash_attention: bool | None = Field(None, description="force flash attention on/off")
    kv_cache_type: str = Field("", description="f16 (default), q8_0 or q4_0")
    kv_unified: bool = Field(False, description="one KV buffer for all sequences: faster batches, "
                             "but a sequence's output may differ slightly with what runs beside it")
    max_body: int = Field(64 * 1024 * 1024, ge=1024, description="largest JSON body in bytes")
    api_key: str | None = Field(None, description="API key the client sends")
    allow_unauthenticated: bool = Field(False, description="allow a public bind without auth")
    tls_cert: Path | None = Field(None, description="TLS certificate (PEM)")
    tls_key: Path | None = Field(None, description="TLS private key (PEM)")
    ca_bundle: Path | None = Field(None, description="CA bundle the client trusts")
    log_format: str = Field("text", description="text or json")
    jwt_secret: str | None = Field(None, description="HS256 secret for JWT bearer tokens")
    jwt_public_key: Path | None = Field(None, description="PEM public key for RS256/ES256 JWTs")
    jwt_audience: str | None = Field(None, description="required JWT `aud`")
    jwt_issuer: str | None = Field(None, description="required JWT `iss`")
    jwt_scope_claim: str = Field("scope", description="JWT claim holding the scopes")
    rate_limit_rpm: int = Field(0, ge=0, description="requests per minute per key; 0 = unlimited")
    rate_limit_tpm: int = Field(0, ge=0, description="tokens per minute per key; 0 = unlimited")
    stream_idle_timeout: str = Field("2m", description="drop a client that reads nothing for this long")
    header_timeout: str = Field("10s", description="time a client has to send request headers/body")

    @field_validator("noprune", "nohistory", "allow_unauthenticated", "kv_unified", mode="before")
    @classmethod
    def _go_bool(cls, value: object) -> bool:
        return parse_env_bool(value)

    @field_validator("flash_attention", mode="before")
    @classmethod
    def _optional_bool(cls, value: object) -> bool | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse_env_bool(value)

    @field_validator("debug", mode="before")
    @classmethod
    def _debug_level(cls, value: object) -> int:
        if isinstance(value, int):
            return value
        text = str(value or "").strip().strip("\"'").lower()
        if text.isdigit():
            return int(text)
        return 1 if parse_env_bool(text) else 0

    @field_validator("home", "models", "tls_cert", "tls_key", "ca_bundle", "jwt_public_key", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `CORRAL_*` from `environ` (default: the process environment) plus overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(f"CORRAL_{name.upper()}")
            if raw is not None and raw.strip().strip("\"'") != "":
                values[name] = raw.strip().strip("\"'")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    # Derived values -------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.models if self.models is not None else self.home / "models"

    @property
    def host_url(self) -> HostURL:
        return HostURL.parse(self.host)

    @property
    def keep_alive_seconds(self) -> float:
        return env_duration_seconds(self.keep_alive)

    @property
    def load_timeout_seconds(self) -> float:
        return env_duration_seconds(self.load_timeout)

    @property
    def default_num_ctx(self) -> int:
        return self.context_length or DEFAULT_CONTEXT_LENGTH

    @property
    def max_runners(self) -> int:
        return self.max_loaded_models or 3

    @property
    def stream_idle_timeout_seconds(self) -> float:
        return env_duration_seconds(self.stream_idle_timeout)

    @property
    def header_timeout_seconds(self) -> float:
        return env_duration_seconds(self.header_timeout)

    @property
    def origin_list(self) -> list[str]:
        return [o.strip() for o in self.origins.split(",") if o.strip()]

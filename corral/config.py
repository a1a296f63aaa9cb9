"""Settings: every `CORRAL_*` variable, read once at the edge (CLI / server start) and passed down.

`corral.configfile.load_settings` adds the config file under the environment.
Nothing below the CLI and `server.app` reads the environment. Names map one-to-one onto Ollama's
`OLLAMA_*` variables (README "Configuration"); values are trimmed of spaces and quotes, and booleans
follow Go's `strconv.ParseBool` with Ollama's rule that any other non-empty value means true.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.durations import env_duration_seconds
from corral.names import ModelName

DEFAULT_PORT = 11434
DURATION_FIELDS = ("keep_alive", "load_timeout", "stream_idle_timeout", "header_timeout")
FILE_ONLY_FIELDS = frozenset({"model_defaults"})
DEFAULT_CONTEXT_LENGTH = 4096
BACKENDS = ("auto", "cpu", "cuda", "vulkan", "cpu-rpc")
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


def _check_duration(value: object) -> object:
    """Durations are Go durations or seconds; a number (from a config file) becomes its text."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as \"5m\" or a number of seconds")
    if isinstance(value, int | float):
        value = str(int(value)) if float(value).is_integer() else f"{value}s"
    if isinstance(value, str):
        try:
            env_duration_seconds(value)
        except ValueError:
            raise ValueError(f"invalid duration {value!r} (use e.g. \"5m\", \"1h30m\" or seconds)") from None
    return value


def _network_list(value: object) -> object:
    """A comma-separated string (environment) or a list of addresses / CIDR networks."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or network") from None
        out.append(text)
    return tuple(out)


class ModelDefaults(BaseModel):
    """Operator defaults for one model (`[models."name"]` in the config file).

    Layered over the global settings and the model's Modelfile parameters, under the request:
    defaults <- CORRAL_* <- Modelfile PARAMETER <- [models."name"] <- request options.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_parallel: int | None = Field(None, ge=1, description="parallel sequences for this model")
    num_ctx: int | None = Field(None, ge=1, description="default context size")
    keep_alive: str | None = Field(None, description="default keep-alive (Go duration or seconds)")
    num_gpu: int | None = Field(None, description="layers to offload (-1 = as many as fit)")
    main_gpu: int | None = Field(None, ge=0, description="device index to use")

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return None if value is None else _check_duration(value)

    @property
    def keep_alive_seconds(self) -> float | None:
        return None if self.keep_alive is None else env_duration_seconds(self.keep_alive)

    @property
    def options(self) -> dict[str, int]:
        """The runtime options this section sets (spec §2 names)."""
        values = {"num_ctx": self.num_ctx, "num_gpu": self.num_gpu, "main_gpu": self.main_gpu}
        return {k: v for k, v in values.items() if v is not None}


def registry_url(text: str) -> str:
    """`http(s)://host[:port]` without a path, or ValueError (a registry is addressed by its host)."""
    url = text.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest or "@" in rest:
        raise ValueError(f"registry URL must look like http(s)://host[:port], got {text!r}")
    return url


def parse_mirror_list(text: str) -> list[tuple[str, str]]:
    """`[host=]url, ...` -> [(host or "", url)]; the host is the upstream registry a mirror stands in for."""
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, url = item.partition("=")
        pairs.append((host.strip().lower(), url.strip()) if sep else ("", item))
    return pairs


RPC_DEFAULT_PORT = 50052


def rpc_endpoint(text: str) -> str:
    """`host[:port]` of an RPC worker as ggml's client takes it (IPv4 or a name; split at the colon)."""
    host, sep, port_text = text.strip().partition(":")
    if not host or ":" in port_text or host.startswith("["):
        raise ValueError(f"RPC worker {text.strip()!r} must be host:port with an IPv4 address or a host name "
                         "(llama.cpp's RPC client takes no IPv6 addresses)")
    if not sep:
        return f"{host}:{RPC_DEFAULT_PORT}"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"RPC worker {text.strip()!r}: {port_text!r} is not a port number")
    return f"{host}:{int(port_text)}"


def _rpc_workers(value: object) -> object:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    out: list[str] = []
    for item in items:
        if not str(item).strip():
            continue
        ep = rpc_endpoint(str(item))
        if ep in out:
            raise ValueError(f"RPC worker {ep} is listed twice")
        out.append(ep)
    return tuple(out)


def parse_rpc_split(text: str) -> tuple[float, ...]:
    """`local,w1,w2,...`: shares of the layers, this machine first (llama.cpp's --tensor-split)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        shares = tuple(float(x) for x in items)
    except ValueError:
        raise ValueError(f"{text!r} must be numbers, e.g. 0,1,1 (this machine, then each worker)") from None
    if any(not math.isfinite(x) or x < 0 for x in shares) or (shares and sum(shares) <= 0):
        raise ValueError(f"{text!r}: shares must be finite, not negative, and not all zero")
    return shares


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?")


def parse_size(value: object) -> int:
    """A size in bytes: a number, or a number with a unit (K, M, G, T; KB/KiB alike: powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 4GiB, 512MiB or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.fullmatch(str(value).strip().strip("\"'"))
    if m is None:
        raise ValueError(f"{value!r} is not a size (use e.g. 4GiB, 512MiB or a number of bytes)")
    unit = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * unit)


def _cache_ram_default() -> int:
    """The prompt cache's memory per loaded model when none is set: 10 % of RAM, at most 8 GiB."""
    import psutil

    return int(min(psutil.virtual_memory().total // 10, 8 << 30))


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
    speculative: bool = Field(True, description="speculative decoding: n-gram drafts from the prompt and "
                              "output, and a Modelfile's DRAFT model (off: plain decoding)")
    cache_ram: str = Field("", description="memory for each loaded model's prompt cache beyond its sequences "
                           "(4GiB, 512MiB, bytes; empty = 10% of RAM, at most 8 GiB; 0 = off)")
    cache_disk: Path | None = Field(None, description="directory where prompt-cache entries are kept across "
                                    "unloads and restarts (off when unset)")
    cache_disk_max: str = Field("10GiB", description="size bound of CORRAL_CACHE_DISK")
    engine: str = Field("llamacpp", description="what runs the models: llamacpp, or fake (scripted answers, "
                        "no model is run: for demos and tests of clients)")
    backend: str = Field("auto", description="llama.cpp build for the runners: auto, cpu, cuda, vulkan "
                         "or cpu-rpc (auto: a built cuda or vulkan variant that finds a device, else cpu)")
    backends_dir: Path = Field(Path("~/.cache/corral/backends"), description="where scripts/build_backend.sh "
                               "puts the accelerated builds")
    gpu_overhead: int = Field(0, ge=0, description="bytes kept free on each GPU (OLLAMA_GPU_OVERHEAD)")
    gpu_memory_limit: int = Field(0, ge=0, description="use at most this many bytes of each GPU (0 = its "
                                  "free memory); for tests on devices whose free memory never changes")
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
    registry_mirror: str = Field("", description="pull through these mirrors first, comma separated "
                                 "`[host=]url` (a bare url mirrors registry.ollama.ai)")
    registry_mirror_key: str | None = Field(None, description="API key sent to the registry mirrors")
    registry_mirror_of: str | None = Field(None, description="act as a pull-through mirror of this "
                                           "registry URL for /v2 pulls")
    rpc_workers: tuple[str, ...] = Field((), description="llama.cpp RPC workers (`corral worker`) runners "
                                         "offload layers to, comma separated host:port")
    rpc_split: str = Field("", description="shares of the layers: this machine, then each RPC worker "
                           "(default: every layer that fits on the workers, by their free memory)")
    allow_from: tuple[str, ...] = Field((), description="client addresses/networks allowed (empty: all)")
    allow_from_routes: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="route prefix -> allowed networks (overrides allow_from there)")
    trusted_proxies: tuple[str, ...] = Field((), description="proxies whose X-Forwarded-For is believed")
    model_defaults: dict[str, ModelDefaults] = Field(
        default_factory=dict, description="per-model defaults ([models.\"name\"] in the config file)")

    @field_validator("noprune", "nohistory", "allow_unauthenticated", "kv_unified", "speculative", mode="before")
    @classmethod
    def _go_bool(cls, value: object) -> bool:
        return parse_env_bool(value)

    @field_validator("flash_attention", mode="before")
    @classmethod
    def _optional_bool(cls, value: object) -> bool | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse_env_bool(value)

    @field_validator(*DURATION_FIELDS, mode="before")
    @classmethod
    def _durations(cls, value: object) -> object:
        return _check_duration(value)

    @field_validator("allow_from", "trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return _network_list(value)

    @field_validator("rpc_workers", mode="before")
    @classmethod
    def _rpc_workers(cls, value: object) -> object:
        return _rpc_workers(value)

    @field_validator("rpc_split", mode="after")
    @classmethod
    def _rpc_split(cls, value: str) -> str:
        parse_rpc_split(value)
        return value

    @model_validator(mode="after")
    def _rpc_split_matches(self) -> Settings:
        shares = parse_rpc_split(self.rpc_split)
        if shares and len(shares) != len(self.rpc_workers) + 1:
            raise ValueError(f"rpc_split has {len(shares)} shares for {len(self.rpc_workers)} RPC workers: "
                             "give one for this machine, then one per worker")
        return self

    @field_validator("allow_from_routes", mode="before")
    @classmethod
    def _route_networks(cls, value: object) -> object:
        """`/metrics=127.0.0.1,10.0.0.0/8;/api/keys=127.0.0.1` in the environment, a table in a file."""
        if isinstance(value, str):
            table: dict[str, object] = {}
            for part in value.split(";"):
                prefix, sep, nets = part.partition("=")
                if part.strip() and not sep:
                    raise ValueError(f"expected PREFIX=NETWORKS, got {part.strip()!r}")
                if part.strip():
                    table[prefix.strip()] = nets
            value = table
        if not isinstance(value, dict):
            return value
        out: dict[str, object] = {}
        for prefix, nets in value.items():
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ValueError(f"route prefix {prefix!r} must start with '/'")
            out[prefix] = _network_list(nets)
        return out

    @field_validator("model_defaults", mode="after")
    @classmethod
    def _model_names(cls, value: dict[str, ModelDefaults]) -> dict[str, ModelDefaults]:
        for name in value:
            if ModelName.try_parse(name) is None:
                raise ValueError(f"invalid model name {name!r}")
        return value

    @field_validator("registry_mirror", mode="after")
    @classmethod
    def _mirrors(cls, value: str) -> str:
        for _, url in parse_mirror_list(value):
            registry_url(url)
        return value

    @field_validator("registry_mirror_of", mode="after")
    @classmethod
    def _mirror_of(cls, value: str | None) -> str | None:
        return None if value is None else registry_url(value)

    @field_validator("debug", mode="before")
    @classmethod
    def _debug_level(cls, value: object) -> int:
        if isinstance(value, int):
            return value
        text = str(value or "").strip().strip("\"'").lower()
        if text.isdigit():
            return int(text)
        return 1 if parse_env_bool(text) else 0

    @field_validator("backend", mode="after")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r} (choose one of {', '.join(BACKENDS)})")
        return value

    @field_validator("backends_dir", "home", "models", "tls_cert", "tls_key", "ca_bundle", "jwt_public_key",
                     "cache_disk", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `CORRAL_*` from `environ` (default: the process environment) plus overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if name in FILE_ONLY_FIELDS:
                continue
            raw = env.get(f"CORRAL_{name.upper()}")
            if raw is not None and raw.strip().strip("\"'") != "":
                values[name] = raw.strip().strip("\"'")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    def defaults_for(self, name: ModelName) -> ModelDefaults | None:
        """The `[models."..."]` section for a model, matched as model names are (case-insensitive)."""
        for key, section in self.model_defaults.items():
            parsed = ModelName.try_parse(key)
            if parsed is not None and parsed.matches(name):
                return section
        return None

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

    @field_validator("cache_ram", "cache_disk_max", mode="after")
    @classmethod
    def _size(cls, value: str) -> str:
        if value.strip():
            parse_size(value)
        return value

    @property
    def cache_ram_bytes(self) -> int:
        return parse_size(self.cache_ram) if self.cache_ram.strip() else _cache_ram_default()

    @property
    def cache_disk_max_bytes(self) -> int:
        return parse_size(self.cache_disk_max) if self.cache_disk_max.strip() else 0

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
    def registry_mirrors(self) -> list[tuple[str, str]]:
        """(upstream host, mirror URL) pairs in order; "" is the default registry host."""
        return parse_mirror_list(self.registry_mirror)

    @property
    def rpc_shares(self) -> tuple[float, ...]:
        """The RPC split as numbers; () = sized by the workers' memory. Its length is checked here."""
        return parse_rpc_split(self.rpc_split)

    @property
    def origin_list(self) -> list[str]:
        return [o.strip() for o in self.origins.split(",") if o.strip()]

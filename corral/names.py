"""Model names: `[scheme://][host/][namespace/]model[:tag]` (spec §6, Ollama's types/model/name.go).

Owns parsing, validation, defaults and display forms. Validation guarantees every part is a safe
single path component (no `/`, never `.` or `..`, first character alphanumeric or `_`), so a valid
name can never address a file outside the store root.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.errors import InvalidNameError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

_MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


def _is_alnum_underscore(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


def is_valid_part(kind: str, s: str) -> bool:
    """Whether `s` is a valid `kind` part ("host", "namespace", "model" or "tag")."""
    if not 1 <= len(s) <= _MAX_LEN[kind]:
        return False
    if not _is_alnum_underscore(s[0]):
        return False
    for c in s[1:]:
        if c in "_-":
            continue
        if c == ".":
            if kind == "namespace":
                return False
            continue
        if c == ":":
            if kind != "host":
                return False
            continue
        if not _is_alnum_underscore(c):
            return False
    return True


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name; build it with `ModelName.parse`."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    @classmethod
    def parse_bare(cls, text: str) -> tuple[str, str, str, str, str]:
        """Split into (scheme, host, namespace, model, tag) without defaults or validation."""
        s = text
        scheme = ""
        if "://" in s:
            scheme, s = s.split("://", 1)
        tag = ""
        colon = s.rfind(":")
        if colon > s.rfind("/"):
            s, tag = s[:colon], s[colon + 1 :]
        parts = s.split("/")
        model = parts[-1]
        namespace = parts[-2] if len(parts) >= 2 else ""
        host = "/".join(parts[:-2]) if len(parts) >= 3 else ""
        return scheme, host, namespace, model, tag

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse and fill defaults; raise InvalidNameError if any part is invalid."""
        name = cls.try_parse(text)
        if name is None:
            raise InvalidNameError()
        return name

    @classmethod
    def try_parse(cls, text: str) -> ModelName | None:
        """Like `parse`, returning None for an invalid name."""
        if not isinstance(text, str) or not text.strip():
            return None
        scheme, host, namespace, model, tag = cls.parse_bare(text.strip())
        body = text.strip().split("://", 1)[-1]
        if body.startswith("/") or "//" in body or body.endswith(":"):
            return None  # an explicitly empty part: never fill it with a default
        name = cls(
            host=host or DEFAULT_HOST,
            namespace=namespace or DEFAULT_NAMESPACE,
            model=model,
            tag=tag or DEFAULT_TAG,
            scheme=scheme or DEFAULT_SCHEME,
        )
        return name if name.is_valid() else None

    def is_valid(self) -> bool:
        return (
            self.scheme in ("http", "https")
            and is_valid_part("host", self.host)
            and is_valid_part("namespace", self.namespace)
            and is_valid_part("model", self.model)
            and is_valid_part("tag", self.tag)
        )

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """(host, namespace, model, tag): the manifest path components."""
        return (self.host, self.namespace, self.model, self.tag)

    def display_shortest(self) -> str:
        """`model:tag`, `ns/model:tag` or `host/ns/model:tag`, as Ollama displays it."""
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display_long(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def key(self) -> tuple[str, str, str, str]:
        """Case-insensitive identity (Ollama matches manifests case-insensitively)."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def matches(self, other: ModelName) -> bool:
        return self.key() == other.key()

    def __str__(self) -> str:
        return self.display_shortest()

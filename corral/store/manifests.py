"""Manifest and config documents (spec §6; Ollama's manifest/manifest.go, manifest/layer.go,
types/model/config.go).

Owns the JSON shapes: `Layer`, `Manifest` and `ConfigV2`, each with `to_bytes()` producing
exactly what Go's `json.NewEncoder` writes (Go struct field order, omitempty fields left out,
trailing newline) and a tolerant `from_bytes()`. Does not touch the filesystem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from corral.errors import BadRequestError
from corral.gguf import GGUFInfo
from corral.store import gojson, media
from corral.store.blobs import normalize_digest


class ManifestError(BadRequestError):
    """A manifest or config document that does not parse."""


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"invalid {what}: {e}") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"invalid {what}: not a JSON object")
    return obj


def _int(v: Any, default: int = 0) -> int:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


@dataclass
class Layer:
    """One manifest entry: `{"mediaType","digest","size","from"?,"name"?}`."""

    media_type: str
    digest: str
    size: int
    from_: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            d["from"] = self.from_
        if self.name:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Layer:
        if not isinstance(d, dict):
            raise ManifestError("invalid manifest: layer is not an object")
        return cls(
            media_type=_str(d.get("mediaType")),
            digest=_str(d.get("digest")),
            size=_int(d.get("size")),
            from_=_str(d.get("from")) or None,
            name=_str(d.get("name")) or None,
        )


@dataclass
class Manifest:
    """A Docker v2 schema 2 manifest as Ollama writes it."""

    config: Layer
    layers: list[Layer]
    schema_version: int = 2
    media_type: str = media.MANIFEST
    runner: str | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        if self.runner:
            d["runner"] = self.runner
        if self.format:
            d["format"] = self.format
        return d

    def to_bytes(self) -> bytes:
        return gojson.encode(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        obj = _load_object(data, "manifest")
        if obj.get("mediaType") == media.MANIFEST_LIST:
            raise ManifestError("manifest lists are not supported")
        layers = obj.get("layers")
        layers = [] if layers is None else layers
        if not isinstance(layers, list):
            raise ManifestError("invalid manifest: layers is not a list")
        config = obj.get("config")
        return cls(
            config=Layer.from_dict(config) if config else Layer("", "", 0),
            layers=[Layer.from_dict(x) for x in layers],
            schema_version=_int(obj.get("schemaVersion")),
            media_type=_str(obj.get("mediaType")),
            runner=_str(obj.get("runner")) or None,
            format=_str(obj.get("format")) or None,
        )

    def all_layers(self) -> list[Layer]:
        """Layers plus the config (the blobs this manifest references)."""
        return [*self.layers, self.config] if self.config.digest else list(self.layers)

    def unique_layers(self) -> list[Layer]:
        """Config first, then layers, each digest once: the blobs to transfer in a pull or push."""
        seen: set[str] = set()
        out: list[Layer] = []
        for layer in [*([self.config] if self.config.digest else []), *self.layers]:
            if layer.digest not in seen:
                seen.add(layer.digest)
                out.append(layer)
        return out

    def digests(self) -> set[str]:
        """Normalized digests of every referenced blob; ManifestError if any is malformed."""
        out: set[str] = set()
        for layer in self.all_layers():
            if not layer.digest:
                continue
            try:
                out.add(normalize_digest(layer.digest))
            except BadRequestError:
                raise ManifestError(f"invalid manifest: bad digest {layer.digest!r}") from None
        return out

    def size(self) -> int:
        """Sum of layer and config sizes (what /api/tags reports)."""
        return sum(layer.size for layer in self.all_layers())

    def layers_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]


@dataclass
class ConfigV2:
    """The config blob (types/model/config.go plus the Docker fields create.go fills)."""

    model_format: str = ""
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""
    file_type: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    remote_host: str = ""
    remote_model: str = ""
    capabilities: list[str] = field(default_factory=list)
    context_length: int = 0
    embedding_length: int = 0
    base_name: str = ""
    draft: dict[str, str] | None = None
    architecture: str = "amd64"
    os: str = "linux"
    rootfs_type: str = "layers"
    diff_ids: list[str] | None = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    _OMITEMPTY = (
        "renderer",
        "parser",
        "requires",
        "remote_host",
        "remote_model",
        "capabilities",
        "context_length",
        "embedding_length",
        "base_name",
        "draft",
    )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model_format": self.model_format,
            "model_family": self.model_family,
            "model_families": self.model_families,
            "model_type": self.model_type,
            "file_type": self.file_type,
        }
        for key in self._OMITEMPTY:
            value = getattr(self, key)
            if value:
                d[key] = value
        d["architecture"] = self.architecture
        d["os"] = self.os
        d["rootfs"] = {"type": self.rootfs_type, "diff_ids": self.diff_ids}
        return d

    def to_bytes(self) -> bytes:
        return gojson.encode(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfigV2:
        obj = _load_object(data, "config")
        rootfs = obj.get("rootfs") if isinstance(obj.get("rootfs"), dict) else {}
        assert isinstance(rootfs, dict)
        families = obj.get("model_families")
        caps = obj.get("capabilities")
        draft = obj.get("draft")
        diff_ids = rootfs.get("diff_ids")
        known = {*cls._OMITEMPTY, "model_format", "model_family", "model_families", "model_type"}
        known |= {"file_type", "architecture", "os", "rootfs"}
        return cls(
            model_format=_str(obj.get("model_format")),
            model_family=_str(obj.get("model_family")),
            model_families=[str(x) for x in families] if isinstance(families, list) else None,
            model_type=_str(obj.get("model_type")),
            file_type=_str(obj.get("file_type")),
            renderer=_str(obj.get("renderer")),
            parser=_str(obj.get("parser")),
            requires=_str(obj.get("requires")),
            remote_host=_str(obj.get("remote_host")),
            remote_model=_str(obj.get("remote_model")),
            capabilities=[str(x) for x in caps] if isinstance(caps, list) else [],
            context_length=_int(obj.get("context_length")),
            embedding_length=_int(obj.get("embedding_length")),
            base_name=_str(obj.get("base_name")),
            draft={str(k): str(v) for k, v in draft.items()} if isinstance(draft, dict) else None,
            architecture=_str(obj.get("architecture")),
            os=_str(obj.get("os")),
            rootfs_type=_str(rootfs.get("type")),
            diff_ids=[str(x) for x in diff_ids] if isinstance(diff_ids, list) else None,
            extra={k: v for k, v in obj.items() if k not in known},
        )


def config_from_gguf(info: GGUFInfo, diff_ids: list[str] | None = None) -> ConfigV2:
    """The config blob Ollama writes for a GGUF model (family, parameter size, quantization)."""
    return ConfigV2(
        model_format="gguf",
        model_family=info.architecture,
        model_families=[info.architecture],
        model_type=info.parameter_size,
        file_type=info.file_type,
        context_length=info.context_length or 0,
        embedding_length=info.embedding_length or 0,
        diff_ids=list(diff_ids or []),
    )

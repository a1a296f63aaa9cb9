"""GGUF metadata without loading weights: architecture, sizes, chat template, tensor table.

Owns: reading a GGUF header (key/values and tensor infos) into a `GGUFInfo`, the derived facts
the rest of corral needs (Ollama's `details`, `/api/show` `model_info`, capabilities, KV-cache
bytes per token) and Ollama's `format.HumanNumber`.
Does not own: loading or running a model (engines), the store, templates.

The header is parsed with a bounds-checked reader over a memory map, using the `gguf` package's
constants (value types, tensor types, block sizes). `gguf.GGUFReader` is not used: it builds a
numpy view per array element (about 3 s for SmolLM2's 49k-token vocabulary) and reads past the
end of a truncated file without complaint. Tensor data is never touched: only its extent is
checked against the file size. Every failure surfaces as `corral.errors.GGUFError`.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from corral.errors import GGUFError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 8
# Values in model_info arrays longer than this are elided unless verbose (Ollama's getModelData).
SHOW_ARRAY_LIMIT = 5

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "B",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


class _Truncated(Exception):
    """Internal: a read past the end of the file."""


class _Corrupt(Exception):
    """Internal: a structurally invalid header."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str  # ggml type name, e.g. "Q4_K", "F32"
    shape: list[int]

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass
class GGUFInfo:
    """The metadata of one GGUF file (header only; no tensor data is read)."""

    path: Path
    architecture: str
    parameter_count: int
    file_type: str
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool | None
    pooling: bool
    kv: dict[str, Any] = field(repr=False)
    tensors: list[TensorInfo] = field(repr=False)

    @property
    def parameter_size(self) -> str:
        """Ollama's `details.parameter_size` (format.HumanNumber of the parameter count)."""
        return human_number(self.parameter_count)

    @property
    def tensor_parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        """`/api/show` `model_info`: the KV map minus `general.name` and `tokenizer.chat_template`.

        Like Ollama's decoder, `general.parameter_count` is (re)set to the tensor element sum when
        the file has tensors. Arrays longer than 5 become `[]` unless `verbose`.
        """
        out: dict[str, Any] = {}
        for key, value in self.kv.items():
            if key in ("general.name", "tokenizer.chat_template"):
                continue
            if not verbose and isinstance(value, list) and len(value) > SHOW_ARRAY_LIMIT:
                value = []
            out[key] = value
        if self.tensors or "general.parameter_count" not in out:
            out["general.parameter_count"] = self.tensor_parameter_count
        return out

    def capabilities(self) -> list[str]:
        """Capabilities derivable from the GGUF alone (spec §1 capability detection)."""
        caps = ["embedding" if self.pooling else "completion"]
        arch = self.architecture
        if f"{arch}.vision.block_count" in self.kv or any(k.startswith(f"{arch}.vision.") for k in self.kv):
            caps.append("vision")
        if f"{arch}.audio.block_count" in self.kv:
            caps.append("audio")
        template = self.chat_template or ""
        if "tools" in template or "tool_call" in template:
            caps.append("tools")
        if "<think>" in template and "</think>" in template:
            caps.append("thinking")
        return caps

    def kv_bytes_per_token(self) -> int:
        """f16 K+V cache bytes per token of context (0 when the header lacks the sizes)."""
        arch = self.architecture
        blocks = self.block_count
        heads = _as_int(self.kv.get(f"{arch}.attention.head_count"), take="max")
        if not blocks or not heads or not self.embedding_length:
            return 0
        head_dim = self.embedding_length // heads
        key_len = _as_int(self.kv.get(f"{arch}.attention.key_length")) or head_dim
        value_len = _as_int(self.kv.get(f"{arch}.attention.value_length")) or head_dim
        raw_kv_heads = self.kv.get(f"{arch}.attention.head_count_kv", heads)
        if isinstance(raw_kv_heads, list):
            per_layer = [int(h) for h in raw_kv_heads[:blocks]]
        else:
            per_layer = [int(raw_kv_heads)] * blocks
        return sum(h * (key_len + value_len) * 2 for h in per_layer)


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber: 134515008 -> "134.52M", 8030261248 -> "8.0B", 1500 -> "2K"."""
    if n >= 1_000_000_000:
        value = n / 1_000_000_000
        return f"{value:.0f}B" if value == int(value) else f"{value:.1f}B"
    if n >= 1_000_000:
        value = n / 1_000_000
        return f"{value:.0f}M" if value == int(value) else f"{value:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def file_type_name(value: int) -> str:
    """Ollama's FileType.String() for a `general.file_type` number ("unknown" if not known)."""
    try:
        member = LlamaFileType(value)
    except ValueError:
        return "unknown"
    if member is LlamaFileType.GUESSED:
        return "unknown"
    name: str = member.name
    return name.removeprefix("ALL_").removeprefix("MOSTLY_")


def is_gguf(path: str | Path) -> bool:
    """True if the file exists and starts with the GGUF magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def read_gguf(path: str | Path) -> GGUFInfo:
    """Read a GGUF header; raise GGUFError (and only GGUFError) when it cannot be read."""
    p = Path(path)
    try:
        return _read(p)
    except GGUFError:
        raise
    except _Truncated as exc:
        raise GGUFError(f"{p}: truncated GGUF file ({exc})") from None
    except _Corrupt as exc:
        raise GGUFError(f"{p}: corrupt GGUF file: {exc}") from None
    except FileNotFoundError:
        raise GGUFError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{p}: is a directory, not a GGUF file") from None
    except OSError as exc:
        raise GGUFError(f"{p}: cannot read GGUF file: {exc.strerror or exc}") from None
    except Exception as exc:  # a reader bug must still surface as a GGUF error
        raise GGUFError(f"{p}: corrupt GGUF file: {type(exc).__name__}: {exc}") from None


def _read(path: Path) -> GGUFInfo:
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            raise GGUFError(f"{path}: not a GGUF file (file is empty)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            header = _Header(mm, size)
            kv, tensors = header.parse(path)
    return _build_info(path, kv, tensors)


class _Header:
    """A bounds-checked cursor over the header of a GGUF file."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.order = "<"

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated(f"needs {n} bytes at offset {self.pos}, file has {self.size}")

    def unpack(self, fmt: str) -> Any:
        st = struct.Struct(self.order + fmt)
        self.need(st.size)
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def string(self) -> str:
        length = self.unpack("Q")
        self.need(length)
        raw: bytes = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def parse(self, path: Path) -> tuple[dict[str, Any], list[tuple[str, int, list[int], int]]]:
        self.need(4)
        magic = self.buf[0:4]
        if magic != MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (bad magic {magic!r})")
        self.pos = 4
        version = self.unpack("I")
        if version & 0xFFFF == 0 and version != 0:
            self.order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors = self.unpack("Q")
        n_kv = self.unpack("Q")
        remaining = self.size - self.pos
        if n_kv * 12 > remaining or n_tensors * 24 > remaining:
            raise _Truncated(f"header declares {n_kv} keys and {n_tensors} tensors")
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            if key in kv:
                raise _Corrupt(f"duplicate key {key!r}")
            kv[key] = self.value(self.unpack("I"), depth=0)
        infos = [self.tensor_info() for _ in range(n_tensors)]
        self.check_data(kv, infos)
        return kv, infos

    def value(self, raw_type: int, depth: int) -> Any:
        vtype = _value_type(raw_type)
        if vtype is GGUFValueType.STRING:
            return self.string()
        if vtype is GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise _Corrupt("arrays nested too deeply")
            return self.array(depth)
        value = self.unpack(_SCALAR_FORMATS[vtype])
        if vtype is GGUFValueType.BOOL:
            return bool(value)
        if vtype is GGUFValueType.FLOAT32:
            return _shortest_float32(value)
        return value

    def array(self, depth: int) -> list[Any]:
        item_type = _value_type(self.unpack("I"))
        count = self.unpack("Q")
        fmt = _SCALAR_FORMATS.get(item_type)
        if fmt is not None:
            st = struct.Struct(f"{self.order}{count}{fmt}") if count < 2**31 else None
            if st is None:
                raise _Truncated(f"array of {count} items")
            self.need(st.size)
            items = list(st.unpack_from(self.buf, self.pos))
            self.pos += st.size
            if item_type is GGUFValueType.BOOL:
                return [bool(v) for v in items]
            return items
        # strings (8-byte length each) and nested arrays (12-byte header each)
        self.need(count * 8)
        return [self.value(item_type.value, depth + 1) for _ in range(count)]

    def tensor_info(self) -> tuple[str, int, list[int], int]:
        name = self.string()
        n_dims = self.unpack("I")
        if n_dims > MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (max {MAX_DIMS})")
        shape = [self.unpack("Q") for _ in range(n_dims)]
        ggml_type = self.unpack("I")
        offset = self.unpack("Q")
        return name, ggml_type, shape, offset

    def check_data(self, kv: dict[str, Any], infos: list[tuple[str, int, list[int], int]]) -> None:
        alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _Corrupt(f"invalid general.alignment {alignment!r}")
        data_start = -(-self.pos // alignment) * alignment
        names: set[str] = set()
        for name, raw_type, shape, offset in infos:
            if name in names:
                raise _Corrupt(f"duplicate tensor {name!r}")
            names.add(name)
            try:
                ggml_type = GGMLQuantizationType(raw_type)
            except ValueError:
                raise _Corrupt(f"tensor {name!r} has unknown type {raw_type}") from None
            block, type_size = GGML_QUANT_SIZES[ggml_type]
            if shape and shape[0] % block:
                raise _Corrupt(f"tensor {name!r} row size {shape[0]} is not a multiple of {block}")
            if offset % alignment:
                raise _Corrupt(f"tensor {name!r} data offset {offset} is not aligned")
            n_elems = 1
            for dim in shape:
                n_elems *= dim
            end = data_start + offset + n_elems // block * type_size
            if end > self.size:
                raise _Truncated(f"tensor {name!r} data ends at {end}, file has {self.size} bytes")


def _value_type(raw: int) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise _Corrupt(f"unknown value type {raw}") from None


def _shortest_float32(value: float) -> float:
    """The float64 whose shortest repr equals the float32's (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _as_int(value: Any, take: str = "first") -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(value) if take == "max" else int(value[0])
    return None


def _token(kv: dict[str, Any], key: str) -> str | None:
    tokens = kv.get("tokenizer.ggml.tokens")
    idx = kv.get(key)
    if isinstance(tokens, list) and isinstance(idx, int) and 0 <= idx < len(tokens):
        text = tokens[idx]
        return text if isinstance(text, str) else None
    return None


def _build_info(path: Path, kv: dict[str, Any], infos: list[tuple[str, int, list[int], int]]) -> GGUFInfo:
    tensors = [TensorInfo(name, GGMLQuantizationType(t).name, shape) for name, t, shape, _ in infos]
    arch_value = kv.get("general.architecture")
    arch = arch_value if isinstance(arch_value, str) else ""
    declared = kv.get("general.parameter_count")
    if isinstance(declared, int) and not isinstance(declared, bool):
        params = declared
    else:
        params = sum(t.n_elements for t in tensors)
    raw_ft = kv.get("general.file_type")
    if isinstance(raw_ft, int) and not isinstance(raw_ft, bool):
        file_type = file_type_name(raw_ft)
    elif tensors:
        file_type = Counter(t.type for t in tensors).most_common(1)[0][0]
    else:
        file_type = "unknown"
    template = kv.get("tokenizer.chat_template")
    add_bos = kv.get("tokenizer.ggml.add_bos_token")
    return GGUFInfo(
        path=path,
        architecture=arch,
        parameter_count=params,
        file_type=file_type,
        context_length=_as_int(kv.get(f"{arch}.context_length")),
        embedding_length=_as_int(kv.get(f"{arch}.embedding_length")),
        block_count=_as_int(kv.get(f"{arch}.block_count")),
        head_count=_as_int(kv.get(f"{arch}.attention.head_count"), take="max"),
        head_count_kv=_as_int(kv.get(f"{arch}.attention.head_count_kv"), take="max"),
        chat_template=template if isinstance(template, str) else None,
        bos_token=_token(kv, "tokenizer.ggml.bos_token_id"),
        eos_token=_token(kv, "tokenizer.ggml.eos_token_id"),
        add_bos_token=add_bos if isinstance(add_bos, bool) else None,
        pooling=f"{arch}.pooling_type" in kv,
        kv=kv,
        tensors=tensors,
    )

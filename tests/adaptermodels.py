"""Synthetic GGUFs derived from real ones, for the rerank and LoRA tests (numpy + `gguf`).

- `write_rank_model`: a copy of a BERT GGUF (all-minilm) turned into a reranker: pooling type RANK
  and a random classification head (`cls.weight`/`cls.bias`, `cls.output.weight`/`.bias`), whose
  weights are returned so a test can score pairs independently.
- `write_lora`: a random rank-r LoRA adapter for a model's `attn_q` / `attn_v` weights, written
  as llama.cpp's `convert_lora_to_gguf.py` does (`general.type=adapter`, `adapter.type=lora`,
  `adapter.lora.alpha`, tensors `<name>.lora_a` of shape (r, n_in) and `<name>.lora_b` (n_out, r)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

Array = np.ndarray[Any, Any]
POOLING_RANK = 4


def _copy_fields(reader: GGUFReader, writer: GGUFWriter, override: dict[str, Any]) -> None:
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        value = override.pop(key, None)
        if value is None:
            value = field.contents()
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for key, value in override.items():  # keys the source does not have
        writer.add_key_value(key, value, GGUFValueType.UINT32 if isinstance(value, int) else GGUFValueType.STRING)


def rank_head(n_embd: int, seed: int) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    return {
        "cls.weight": (rng.standard_normal((n_embd, n_embd)) / np.sqrt(n_embd)).astype(np.float32),
        "cls.bias": (0.1 * rng.standard_normal(n_embd)).astype(np.float32),
        "cls.output.weight": (rng.standard_normal((1, n_embd)) / np.sqrt(n_embd) * 4).astype(np.float32),
        "cls.output.bias": np.array([0.25], dtype=np.float32),
    }


def write_rank_model(src: Path, dst: Path, seed: int = 0) -> dict[str, Array]:
    """`src` (a BERT GGUF) as a reranker at `dst`; returns the head's weights (numpy layout)."""
    reader = GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    n_embd = int(reader.fields[f"{arch}.embedding_length"].contents())
    head = rank_head(n_embd, seed)
    writer = GGUFWriter(str(dst), arch)
    _copy_fields(reader, writer, {f"{arch}.pooling_type": POOLING_RANK})
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    for name, value in head.items():
        writer.add_tensor(name, value)
    _finish(writer)
    return head


def rank_score(head: dict[str, Array], cls_hidden: Array) -> float:
    """llama.cpp's RANK pooling head on the first token's last hidden state."""
    h = np.tanh(head["cls.weight"] @ cls_hidden + head["cls.bias"])
    return float((head["cls.output.weight"] @ h + head["cls.output.bias"])[0])


def write_lora(base: Path, dst: Path, *, rank: int = 8, seed: int = 0, name: str = "test-lora") -> None:
    """A random LoRA on every attn_q / attn_v weight of the model at `base` (alpha = rank)."""
    reader = GGUFReader(str(base))
    arch = str(reader.fields["general.architecture"].contents())
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(dst), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("general.name", name)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for t in reader.tensors:
        if not t.name.endswith((".attn_q.weight", ".attn_v.weight")):
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])  # ggml order: ne0 = input features
        a = rng.standard_normal((rank, n_in)) / np.sqrt(n_in)
        b = rng.standard_normal((n_out, rank)) / np.sqrt(rank)
        writer.add_tensor(t.name + ".lora_a", a.astype(np.float32))
        writer.add_tensor(t.name + ".lora_b", b.astype(np.float32))
    _finish(writer)


def _finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

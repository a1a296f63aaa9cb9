#!/usr/bin/env python3
"""Write a llama-architecture GGUF with random Q8_0 weights, for speed tests where no real model of
the wanted size can be fetched (bench/gpu_check.sh on a machine without network).

The tokenizer (and chat template) is copied from a real GGUF, or from a JSON export of one
(`--export-tokenizer`), so prompts tokenize and chat templates render as for that model; the
answers are noise. One random layer is written `--layers` times: the file is the size of a real
model and costs the same to run, but takes seconds to write.

    random_gguf.py --tokenizer SmolLM2.gguf --export-tokenizer tok.json.xz      # here
    random_gguf.py --tokenizer tok.json.xz --out rand-1b.gguf                   # there (~1.1B, 1.2 GB)
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize


def read_tokenizer(path: Path) -> list[dict[str, Any]]:
    """The `tokenizer.*` keys of a GGUF, or of a JSON export (.json or .json.xz)."""
    if path.suffix in (".json", ".xz"):
        raw = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
        out: list[dict[str, Any]] = json.loads(raw)
        return out
    reader = GGUFReader(path)
    keys = []
    for name, f in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[1].name if vtype == GGUFValueType.ARRAY else None
        keys.append({"key": name, "type": vtype.name, "sub": sub, "value": f.contents()})
    return keys


def export_tokenizer(src: Path, dst: Path) -> None:
    data = json.dumps(read_tokenizer(src)).encode()
    dst.write_bytes(lzma.compress(data) if dst.suffix == ".xz" else data)


def random_q8(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray[Any, Any]:
    data = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
    return quantize(data, GGMLQuantizationType.Q8_0)


def write_model(out: Path, tokenizer: list[dict[str, Any]], *, layers: int, embd: int, ff: int, heads: int,
                kv_heads: int, ctx: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_vocab = next(len(t["value"]) for t in tokenizer if t["key"] == "tokenizer.ggml.tokens")
    head_dim = embd // heads
    w = GGUFWriter(str(out), "llama")
    w.add_name(f"random llama {layers}x{embd}")
    w.add_context_length(ctx)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(7)  # MOSTLY_Q8_0
    for t in tokenizer:
        sub = GGUFValueType[t["sub"]] if t["sub"] else None
        w.add_key_value(t["key"], t["value"], GGUFValueType[t["type"]], sub)
    norm = np.ones(embd, dtype=np.float32)
    layer = {
        "attn_q.weight": random_q8(rng, embd, embd),
        "attn_k.weight": random_q8(rng, kv_heads * head_dim, embd),
        "attn_v.weight": random_q8(rng, kv_heads * head_dim, embd),
        "attn_output.weight": random_q8(rng, embd, embd),
        "ffn_gate.weight": random_q8(rng, ff, embd),
        "ffn_up.weight": random_q8(rng, ff, embd),
        "ffn_down.weight": random_q8(rng, embd, ff),
    }
    w.add_tensor("token_embd.weight", random_q8(rng, n_vocab, embd), raw_dtype=GGMLQuantizationType.Q8_0)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
        for name, data in layer.items():
            w.add_tensor(f"blk.{i}.{name}", data, raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", norm)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True, help="a GGUF, or a JSON(.xz) export of its tokenizer")
    ap.add_argument("--export-tokenizer", type=Path, help="write the tokenizer keys to this .json(.xz) and stop")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--embd", type=int, default=2048)
    ap.add_argument("--ff", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.export_tokenizer:
        export_tokenizer(args.tokenizer, args.export_tokenizer)
        return
    if args.out is None:
        ap.error("--out is required")
    write_model(args.out, read_tokenizer(args.tokenizer), layers=args.layers, embd=args.embd, ff=args.ff,
                heads=args.heads, kv_heads=args.kv_heads, ctx=args.ctx, seed=args.seed)


if __name__ == "__main__":
    main()

"""Tiny Hugging Face models written by tests (random weights, a hand-built byte-level BPE
tokenizer) and independent numpy forward passes to check their GGUF conversions against.

Nothing here uses corral: the safetensors writer, the tokenizer and the reference models are
written from the formats' and architectures' definitions (HF's Llama / Qwen2 / Gemma3 / BERT
modelling code), so a conversion bug cannot cancel out on both sides.
"""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import ROOT

Array = np.ndarray[Any, Any]
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s")]


# safetensors ----------------------------------------------------------------------------------
def as_stored(value: Array, dtype: str) -> Array:
    """`value` as `dtype` keeps it (bfloat16: float32 with the low 16 bits cut off)."""
    if dtype == "BF16":
        return (np.asarray(value, dtype=np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    return np.asarray(value, dtype={"F32": np.float32, "F16": np.float16}[dtype]).astype(np.float32)


def write_safetensors(path: Path, tensors: dict[str, Array], dtype: str = "F32") -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, value in tensors.items():
        if dtype == "BF16":
            data = (np.asarray(value, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
        else:
            data = np.ascontiguousarray(value, dtype={"F32": "<f4", "F16": "<f2"}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def read_safetensors(path: Path) -> dict[str, Array]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] not in ("F32", "F16"):
            continue
        a, b = meta["data_offsets"]
        dt = "<f4" if meta["dtype"] == "F32" else "<f2"
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dt).astype(np.float32).reshape(meta["shape"])
    return out


# A byte-level BPE tokenizer (GPT-2's byte <-> unicode table) ----------------------------------
def byte_chars() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = [b for b in range(256) if b not in keep]
    table = dict(zip(keep + extra, [chr(c) for c in keep] + [chr(256 + i) for i in range(len(extra))], strict=True))
    return [table[b] for b in range(256)]


def tokenizer_files(n_vocab: int) -> dict[str, Any]:
    vocab = {c: i for i, c in enumerate(byte_chars())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    added = [
        {"id": len(vocab) + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, s in enumerate(SPECIALS)
    ]
    assert len(vocab) + len(added) <= n_vocab
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in MERGES]},
    }
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "add_bos_token": False, "chat_template": CHATML}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}


# Tiny decoder models ---------------------------------------------------------------------------
def decoder_config(arch: str) -> dict[str, Any]:
    common = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 288, "max_position_embeddings": 512, "rms_norm_eps": 1e-6}
    if arch == "llama":
        return {**common, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_theta": 10000.0,
                "tie_word_embeddings": False}
    if arch == "qwen2":
        return {**common, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 1000000.0,
                "tie_word_embeddings": True}
    return {**common, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "head_dim": 64,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 64,
            "query_pre_attn_scalar": 64, "hidden_activation": "gelu_pytorch_tanh"}


def random_weights(config: dict[str, Any], seed: int) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    d, ff, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = config.get("head_dim", d // config["num_attention_heads"])
    nq, nkv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    gemma = config["model_type"].startswith("gemma3")

    def mat(rows: int, cols: int) -> Array:
        return rng.normal(0, 1 / math.sqrt(cols), (rows, cols)).astype(np.float32)

    def norm(n: int) -> Array:  # gemma stores w with the norm computing (1 + w)
        return rng.normal(0 if gemma else 1, 0.1, n).astype(np.float32)

    w: dict[str, Array] = {"model.embed_tokens.weight": rng.normal(0, 1, (v, d)).astype(np.float32)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": norm(d), p + "post_attention_layernorm.weight": norm(d),
              p + "self_attn.q_proj.weight": mat(nq, d), p + "self_attn.k_proj.weight": mat(nkv, d),
              p + "self_attn.v_proj.weight": mat(nkv, d), p + "self_attn.o_proj.weight": mat(d, nq),
              p + "mlp.gate_proj.weight": mat(ff, d), p + "mlp.up_proj.weight": mat(ff, d),
              p + "mlp.down_proj.weight": mat(d, ff)}
        if config["model_type"] == "qwen2":
            w |= {p + f"self_attn.{x}_proj.bias": rng.normal(0, 0.5, n).astype(np.float32)
                  for x, n in (("q", nq), ("k", nkv), ("v", nkv))}
        if gemma:
            w |= {p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd),
                  p + "pre_feedforward_layernorm.weight": norm(d), p + "post_feedforward_layernorm.weight": norm(d)}
    w["model.norm.weight"] = norm(d)
    if not config.get("tie_word_embeddings", gemma):
        w["lm_head.weight"] = mat(v, d)
    return w


def write_decoder(directory: Path, arch: str, seed: int = 0, dtype: str = "F32") -> dict[str, Array]:
    """Write a tiny `arch` (llama, qwen2, gemma3) model; returns its weights as stored."""
    directory.mkdir(parents=True, exist_ok=True)
    config = decoder_config(arch)
    (directory / "config.json").write_text(json.dumps(config))
    for name, value in tokenizer_files(config["vocab_size"]).items():
        (directory / name).write_text(json.dumps(value))
    (directory / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9}))
    weights = random_weights(config, seed)
    write_safetensors(directory / "model.safetensors", weights, dtype)
    return {k: as_stored(v, dtype) for k, v in weights.items()}


# Reference forward passes ----------------------------------------------------------------------
def rms_norm(x: Array, w: Array, eps: float) -> Array:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x: Array, theta: float) -> Array:
    """HF's rotate-half RoPE on (heads, positions, head_dim)."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(x.shape[1])[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    half = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
    return x * cos + half * sin


def attention(q: Array, k: Array, v: Array, scale: float) -> Array:
    groups = q.shape[0] // k.shape[0]
    k, v = np.repeat(k, groups, 0), np.repeat(v, groups, 0)
    s = q @ k.transpose(0, 2, 1) * scale
    s = np.where(np.tril(np.ones(s.shape[1:], dtype=bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def gelu_tanh(x: Array) -> Array:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def decoder_logits(weights: dict[str, Array], config: dict[str, Any], ids: list[int]) -> Array:
    """Logits (positions x vocab) of HF's Llama / Qwen2 / Gemma3 text model, in float64."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    gemma = config["model_type"].startswith("gemma3")
    d, nh, nkv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd, eps, n = config.get("head_dim", d // nh), config["rms_norm_eps"], len(ids)
    norm = (lambda x, g: rms_norm(x, 1 + g, eps)) if gemma else (lambda x, g: rms_norm(x, g, eps))
    x = w["model.embed_tokens.weight"][ids] * (math.sqrt(d) if gemma else 1.0)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def proj(h: Array, name: str, heads: int, p: str = p) -> Array:
            out = h @ w[p + f"self_attn.{name}_proj.weight"].T + w.get(p + f"self_attn.{name}_proj.bias", 0.0)
            return out.reshape(n, heads, hd).transpose(1, 0, 2)

        h = norm(x, w[p + "input_layernorm.weight"])
        q, k, v = proj(h, "q", nh), proj(h, "k", nkv), proj(h, "v", nkv)
        theta = config["rope_theta"]
        if gemma:
            q, k = norm(q, w[p + "self_attn.q_norm.weight"]), norm(k, w[p + "self_attn.k_norm.weight"])
            theta = config["rope_theta"] if (i + 1) % 6 == 0 else config["rope_local_base_freq"]
        scale = config.get("query_pre_attn_scalar", hd) ** -0.5
        o = attention(rope(q, theta), rope(k, theta), v, scale).transpose(1, 0, 2).reshape(n, nh * hd)
        o = o @ w[p + "self_attn.o_proj.weight"].T
        x = x + (norm(o, w[p + "post_attention_layernorm.weight"]) if gemma else o)
        h = norm(x, w[p + ("pre_feedforward_layernorm.weight" if gemma else "post_attention_layernorm.weight")])
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        act = gelu_tanh(gate) if gemma else gate / (1 + np.exp(-gate))
        f = (act * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = x + (norm(f, w[p + "post_feedforward_layernorm.weight"]) if gemma else f)
    x = norm(x, w["model.norm.weight"])
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


# MiniLM (BERT) ---------------------------------------------------------------------------------
def wordpiece_ids(text: str, vocab: dict[str, int]) -> list[int]:
    """BERT's uncased basic tokenizer + greedy longest-match WordPiece, with [CLS] ... [SEP]."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    ids = [vocab["[CLS]"]]
    for word in re.findall(r"\w+|[^\w\s]", text):
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start and (word[start:end] if start == 0 else "##" + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[word[start:end] if start == 0 else "##" + word[start:end]])
            start = end
        ids.extend(pieces)
    return [*ids, vocab["[SEP]"]]


def layer_norm(x: Array, g: Array, b: Array, eps: float = 1e-12) -> Array:
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * g + b


def minilm_embedding(w: dict[str, Array], ids: list[int], layers: int = 6, heads: int = 12) -> Array:
    """sentence-transformers all-MiniLM-L6-v2: BERT, mean pooling, L2 normalisation."""
    e = minilm_hidden(w, ids, layers, heads).mean(0)
    return np.asarray(e / np.linalg.norm(e))


def minilm_hidden(w: dict[str, Array], ids: list[int], layers: int = 6, heads: int = 12) -> Array:
    """MiniLM's last hidden states, one row per token (token type 0 throughout, as llama.cpp)."""
    erf = np.vectorize(math.erf)
    n = len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    for i in range(layers):
        p = f"encoder.layer.{i}."

        def lin(h: Array, name: str, p: str = p) -> Array:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (lin(x, "attention.self." + s).reshape(n, heads, -1).transpose(1, 0, 2)
                   for s in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        s = np.exp(s - s.max(-1, keepdims=True))
        a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, -1)
        x = layer_norm(lin(a, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"])
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    return np.asarray(x)


# llama.cpp's logits for a GGUF, in a child process ---------------------------------------------
_LOGITS_SCRIPT = r"""
import ctypes, json, sys
import llama_cpp as ll
import numpy as np
path, ids = sys.argv[1], [int(t) for t in sys.argv[2].split(",")]
quiet = ll.llama_log_callback(lambda *a: None)
ll.llama_log_set(quiet, ctypes.c_void_p(0))
ll.llama_backend_init()
mp = ll.llama_model_default_params(); mp.n_gpu_layers = 0
mp.use_extra_bufts = False  # plain CPU kernels: no repacked (AMX) weights, whatever this CPU offers
model = ll.llama_model_load_from_file(path.encode(), mp)
cp = ll.llama_context_default_params(); cp.n_ctx = 128; cp.n_batch = 128; cp.n_ubatch = 128
cp.n_threads = cp.n_threads_batch = 2
ctx = ll.llama_init_from_model(model, cp)
batch = ll.llama_batch_init(len(ids), 0, 1)
for i, t in enumerate(ids):
    batch.token[i] = t; batch.pos[i] = i; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = 0; batch.logits[i] = 1
batch.n_tokens = len(ids)
assert ll.llama_decode(ctx, batch) == 0
n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
rows = [np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).tolist() for i in range(len(ids))]
print(json.dumps(rows))
"""


def llama_cpp_logits(gguf_path: Path, ids: list[int]) -> Array:
    out = subprocess.run(
        [sys.executable, "-c", _LOGITS_SCRIPT, str(gguf_path), ",".join(map(str, ids))],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return np.array(json.loads(out.stdout))

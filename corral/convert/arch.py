"""The per-architecture part of safetensors -> GGUF conversion: hyperparameter keys, tensor
renames/skips and the few tensor transforms llama.cpp expects (facts from llama.cpp's
convert_hf_to_gguf.py; tensor names themselves come from gguf's `TensorNameMap`).

Owns the table of supported Hugging Face architectures (`config.json` "architectures"):
- llama/mistral: Q and K rows permuted from HF's rotate-half layout to llama.cpp's interleaved
  RoPE; llama3 rope scaling becomes a `rope_freqs` tensor;
- qwen2: NEOX RoPE (no permutation), Q/K/V biases;
- gemma3: every RMSNorm weight stored as (1 + w), vision/audio towers skipped, the text config of
  a multimodal checkpoint used;
- bert: non-causal encoder with token types; pooling is set by the caller.
Anything else is a 400 naming the architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

from corral.convert.jsonfile import Hparams
from corral.errors import BadRequestError

Array = np.ndarray[Any, Any]


def _identity(_name: str, data: Array, _hp: Hparams) -> Array:
    return data


def _no_extra(_hp: Hparams) -> list[tuple[str, Array]]:
    return []


@dataclass(frozen=True)
class Architecture:
    name: str  # GGUF general.architecture
    gguf_arch: gguf.MODEL_ARCH
    write_hparams: Callable[[gguf.GGUFWriter, Hparams, int], None]  # (writer, hparams, n_vocab)
    transform: Callable[[str, Array, Hparams], Array] = _identity  # (GGUF name, float32 data, hparams)
    extra_tensors: Callable[[Hparams], list[tuple[str, Array]]] = _no_extra
    renames: tuple[tuple[str, str], ...] = ()  # HF name prefix -> replacement, first match wins
    skips: tuple[str, ...] = ("rotary_emb.inv_freq",)  # HF name fragments never converted
    f32_tensors: frozenset[str] = field(default_factory=frozenset)  # GGUF names kept in F32
    embedding: bool = False

    def hf_name(self, name: str) -> str | None:
        """The name to look up in the tensor map, or None for a tensor to leave out."""
        for prefix, replacement in self.renames:
            if name.startswith(prefix):
                name = replacement + name[len(prefix) :]
                break
        if any(fragment in name for fragment in self.skips):
            return None
        return name


# Hyperparameters ------------------------------------------------------------------------------
def _decoder_common(w: gguf.GGUFWriter, hp: Hparams) -> None:
    n_head = hp.integer("num_attention_heads")
    w.add_block_count(hp.integer("num_hidden_layers"))
    w.add_context_length(hp.integer("max_position_embeddings"))
    w.add_embedding_length(hp.integer("hidden_size"))
    w.add_feed_forward_length(hp.integer("intermediate_size"))
    w.add_head_count(n_head)
    w.add_head_count_kv(hp.integer("num_key_value_heads", n_head))
    w.add_rope_freq_base(hp.number("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(hp.number("rms_norm_eps", 1e-6))
    if hp.has("head_dim"):
        w.add_key_length(hp.integer("head_dim"))
        w.add_value_length(hp.integer("head_dim"))
    _rope_scaling(w, hp)


def _rope_scaling(w: gguf.GGUFWriter, hp: Hparams) -> None:
    scaling = hp.get("rope_scaling")
    if not isinstance(scaling, dict):
        return
    kind = str(scaling.get("rope_type", scaling.get("type", "default"))).lower()
    if kind in ("default", "llama3"):  # llama3: the rope_freqs tensor carries it
        return
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        if "original_max_position_embeddings" in scaling:
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    else:
        raise BadRequestError(f"unsupported rope_scaling type {kind!r}")


def _head_dim(hp: Hparams) -> int:
    return hp.integer("head_dim", hp.integer("hidden_size") // hp.integer("num_attention_heads"))


def _llama_hparams(w: gguf.GGUFWriter, hp: Hparams, n_vocab: int) -> None:
    _decoder_common(w, hp)
    w.add_vocab_size(n_vocab)
    w.add_rope_dimension_count(_head_dim(hp))


def _qwen2_hparams(w: gguf.GGUFWriter, hp: Hparams, _n_vocab: int) -> None:
    _decoder_common(w, hp)


_GEMMA3_DEFAULTS = {
    "max_position_embeddings": 131072,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "sliding_window": 4096,
}


def _gemma3_hparams(w: gguf.GGUFWriter, hp: Hparams, _n_vocab: int) -> None:
    hp = Hparams({**_GEMMA3_DEFAULTS, **{k: v for k, v in hp.values.items() if v is not None}})
    if hp.get("attn_logit_softcapping") is not None or hp.get("final_logit_softcapping") is not None:
        raise BadRequestError("gemma3: logit soft-capping is not supported")
    _decoder_common(w, hp)
    w.add_sliding_window(hp.integer("sliding_window"))
    if hp.has("rope_local_base_freq"):
        w.add_rope_freq_base_swa(hp.number("rope_local_base_freq"))


def _bert_hparams(w: gguf.GGUFWriter, hp: Hparams, _n_vocab: int) -> None:
    if hp.get("position_embedding_type", "absolute") != "absolute":
        raise BadRequestError("bert: only absolute position embeddings are supported")
    w.add_block_count(hp.integer("num_hidden_layers"))
    w.add_context_length(hp.integer("max_position_embeddings"))
    w.add_embedding_length(hp.integer("hidden_size"))
    w.add_feed_forward_length(hp.integer("intermediate_size"))
    w.add_head_count(hp.integer("num_attention_heads"))
    w.add_layer_norm_eps(hp.number("layer_norm_eps", 1e-12))
    w.add_causal_attention(False)
    w.add_token_type_count(hp.integer("type_vocab_size", 2))


# Tensor transforms ----------------------------------------------------------------------------
def rope_permute(w: Array, n_head: int) -> Array:
    """HF keeps each head's rotary halves apart (rotate_half); llama.cpp rotates neighbours."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_transform(name: str, data: Array, hp: Hparams) -> Array:
    n_head = hp.integer("num_attention_heads")
    if name.endswith(("attn_q.weight", "attn_q.bias")):
        return rope_permute(data, n_head)
    if name.endswith(("attn_k.weight", "attn_k.bias")):
        return rope_permute(data, hp.integer("num_key_value_heads", n_head))
    return data


def _gemma3_transform(name: str, data: Array, _hp: Hparams) -> Array:
    return data + 1.0 if name.endswith("norm.weight") else data


def _llama3_rope_freqs(hp: Hparams) -> list[tuple[str, Array]]:
    """Llama 3.1+'s frequency-dependent RoPE scaling as a per-dimension factor tensor."""
    scaling = hp.get("rope_scaling")
    if not isinstance(scaling, dict) or str(scaling.get("rope_type", "")).lower() != "llama3":
        return []
    base, dim = hp.number("rope_theta", 10000.0), _head_dim(hp)
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    out: list[float] = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return [("rope_freqs.weight", np.array(out, dtype=np.float32))]


# The table ------------------------------------------------------------------------------------
LLAMA = Architecture(
    "llama", gguf.MODEL_ARCH.LLAMA, _llama_hparams, _llama_transform, _llama3_rope_freqs,
    f32_tensors=frozenset({"rope_freqs.weight"}),
)
QWEN2 = Architecture("qwen2", gguf.MODEL_ARCH.QWEN2, _qwen2_hparams)
GEMMA3 = Architecture(
    "gemma3", gguf.MODEL_ARCH.GEMMA3, _gemma3_hparams, _gemma3_transform,
    renames=(("model.language_model.", "model."), ("language_model.", "")),
    skips=("rotary_emb.inv_freq", "vision_tower", "multi_modal_projector", "audio_tower", "embed_vision",
           "embed_audio"),
)
BERT = Architecture(
    "bert", gguf.MODEL_ARCH.BERT, _bert_hparams,
    renames=(("bert.", ""),),
    skips=("embeddings.position_ids", "pooler.", "cls."),
    f32_tensors=frozenset({"position_embd.weight", "token_types.weight"}),
    embedding=True,
)

ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": QWEN2,
    "Gemma3ForCausalLM": GEMMA3,
    "Gemma3ForConditionalGeneration": GEMMA3,
    "BertModel": BERT,
    "BertForMaskedLM": BERT,
}


def architecture_of(config: Any) -> tuple[Architecture, Hparams]:
    """The supported architecture a config.json names, and its (text model's) hyperparameters."""
    if not isinstance(config, dict):
        raise BadRequestError("config.json is not a JSON object")
    names = config.get("architectures")
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None
    if name is None:
        raise BadRequestError('config.json names no "architectures"')
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise BadRequestError(f'unsupported architecture "{name}"')
    text = config.get("text_config")
    values = {**config, **text} if isinstance(text, dict) else dict(config)
    return arch, Hparams(values)

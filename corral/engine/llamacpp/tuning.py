"""What every llama.cpp runner of a server is started with, whatever the model: the operator's
CORRAL_FLASH_ATTENTION, CORRAL_KV_CACHE_TYPE and CORRAL_KV_UNIFIED. They belong to this engine (a
remote or other engine has its own, or none), so they are given to `LlamaCppEngine` by the
composition root instead of travelling in every `LoadSpec`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerTuning:
    flash_attention: bool | None = None  # None: llama.cpp decides (`auto`)
    kv_cache_type: str = ""  # "" = f16; q8_0, q4_0
    kv_unified: bool = False  # one KV buffer shared by all sequences (faster; not batch-invariant)
    speculative: bool = True  # CORRAL_SPECULATIVE: draft tokens verified in the batch (spec.py)

    @property
    def kv_type(self) -> str:
        return self.kv_cache_type or "f16"

    def argv(self) -> list[str]:
        """The runner's command-line flags for these settings."""
        if self.flash_attention is None:
            argv = ["--flash-attn", "auto"]  # the runner decides: `flash_attn_for`
        else:
            argv = ["--flash-attn", "on" if self.flash_attention else "off"]
        if self.kv_cache_type:
            argv += ["--kv-cache-type", self.kv_cache_type]
        if self.kv_unified:
            argv.append("--kv-unified")
        if not self.speculative:
            argv.append("--no-speculative")
        return argv


def flash_attn_for(requested: str, *, cpu_only: bool, kv_cache_type: str) -> str:
    """The runner's flash attention setting once `auto` is resolved.

    `auto` on a runner with no layers on a local GPU is off (RPC workers included: a model split
    over CPU workers answers as it does locally). llama.cpp's CPU flash-attention
    kernel costs time in proportion to the cached tokens, per query row, where the plain path barely
    grows: measured on SmolLM2 / 2 cores, one token at position 16 takes 13-15 ms either way, but at
    position 400 34 ms with it against 19 without, at 3200 109 against 34, and 24 prompt tokens at
    position 800 604 ms against 203 (`bench/RESULTS.md`). It only wins below ~128 cached tokens
    (by 10-20 %) and for long prompts computed from scratch. A quantized KV cache needs it (llama.cpp
    quantizes V only with flash attention), and GPUs are left to llama.cpp, as llama-server does.
    """
    if requested != "auto" or not cpu_only or kv_cache_type not in ("", "f16"):
        return requested
    return "off"

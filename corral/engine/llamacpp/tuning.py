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
            # llama.cpp decides, as llama-server's default does; measured on SmolLM2 / 2 cores
            # (bench/runner_ab.py): +17 % at 1 sequence, +7 % at 4, +16 % at 8 over forcing it off
            argv = ["--flash-attn", "auto"]
        else:
            argv = ["--flash-attn", "on" if self.flash_attention else "off"]
        if self.kv_cache_type:
            argv += ["--kv-cache-type", self.kv_cache_type]
        if self.kv_unified:
            argv.append("--kv-unified")
        if not self.speculative:
            argv.append("--no-speculative")
        return argv

"""The llama.cpp engine reloads without weight repacking when a runner dies on SIGILL at load."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from corral.engine.base import LoadSpec
from corral.engine.llamacpp.proc import LlamaCppEngine, Placement, RunnerCrashedError


class _Probe(LlamaCppEngine):
    def __init__(self, tmp: Path, fail_with: int | None) -> None:
        super().__init__(log_dir=tmp)
        self.calls: list[bool] = []
        self.fail_with = fail_with

    async def _spawn(self, spec: LoadSpec, placement: Placement | None = None) -> Any:
        self.calls.append(self.extra_bufts)
        if self.extra_bufts and self.fail_with is not None:
            raise RunnerCrashedError("llama runner process has terminated", signal=self.fail_with)
        return "runner"


def test_sigill_at_load_retries_without_repacking_and_remembers(tmp_path: Path) -> None:
    engine = _Probe(tmp_path, signal.SIGILL)
    spec = LoadSpec(model_path=tmp_path / "m.gguf")
    assert asyncio.run(engine.load(spec)) == "runner"
    assert engine.calls == [True, False]
    assert asyncio.run(engine.load(spec)) == "runner"
    assert engine.calls == [True, False, False]  # decided once for the engine's life


def test_other_crashes_are_not_retried(tmp_path: Path) -> None:
    engine = _Probe(tmp_path, signal.SIGSEGV)
    with pytest.raises(RunnerCrashedError):
        asyncio.run(engine.load(LoadSpec(model_path=tmp_path / "m.gguf")))
    assert engine.calls == [True]
    assert engine.extra_bufts

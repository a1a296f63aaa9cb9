"""The scheduler accounts accelerator memory per device (issue 12), against a scripted engine that
offloads with the real fit (corral/fit.py) onto an injected device table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corral.config import Settings
from corral.engine.base import LoadSpec
from corral.engine.fake import ScriptedEngine, ScriptedRunner
from corral.fit import Accelerated, Device, FitRequest, GiB, Layout, MiB, Placement, fit, usable
from corral.scheduler import ModelRef, Scheduler
from corral.schemas.options import LoadOptions

# 24 layers of 40 MiB + a 40 MiB output: ~1 GiB of weights with its KV and compute buffers
LAYOUT = Layout((40 * MiB,) * 24, 40 * MiB, 40 * MiB, (256,) * 24, 1024, 32000, 16)


@dataclass
class GpuRunner(ScriptedRunner):
    placement: Placement | None = None

    @property
    def device_bytes(self) -> dict[str, int]:
        return dict(self.placement.device_bytes) if self.placement is not None else {}


@dataclass
class GpuEngine(ScriptedEngine):
    table: list[Device] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)

    def devices(self) -> list[Device]:
        return usable(self.table)

    def place(self, spec: LoadSpec, used: Mapping[str, int] | None = None) -> Placement:
        req = FitRequest(n_ctx=spec.options.num_ctx, num_gpu=spec.options.num_gpu)
        return fit(LAYOUT, usable(self.table, used=used), req)

    async def load(self, spec: LoadSpec, placement: Placement | None = None) -> GpuRunner:  # type: ignore[override]
        runner = GpuRunner(spec, list(self.words), self.delay, self.estimate(spec), placement=placement)
        self.runners.append(runner)
        if placement is not None:
            self.placements.append(placement)
        return runner


def ref(path: str, num_gpu: int = -1) -> ModelRef:
    spec = LoadSpec(model_path=Path(path), options=LoadOptions(num_ctx=2048, num_gpu=num_gpu))
    return ModelRef(name=path, digest="d" * 64, spec=spec)


def make(gib: float) -> tuple[Scheduler, GpuEngine]:
    size = int(gib * GiB)
    engine = GpuEngine(table=[Device(0, "Vulkan0", "test", "gpu", size, size)])
    assert isinstance(engine, Accelerated)
    return Scheduler(engine, Settings(), memory_probe=lambda: 10**12), engine


def test_a_model_that_does_not_fit_beside_an_idle_one_evicts_it(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        sched, engine = make(1.5)
        async with sched.lease(ref("/m/a")):
            pass
        assert engine.placements[0].full  # alone, all 25 layers fit
        caplog.set_level(logging.INFO, logger="corral.scheduler")
        async with sched.lease(ref("/m/b")):
            pass
        assert engine.runners[0].closed, "host memory was plentiful: only device memory could evict it"
        assert engine.placements[1].full
        assert "to free GPU memory for /m/b" in caplog.text
    asyncio.run(main())


def test_a_model_that_does_not_fit_beside_a_busy_one_loads_partially_offloaded(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        sched, engine = make(1.5)
        caplog.set_level(logging.INFO, logger="corral.scheduler")
        async with sched.lease(ref("/m/a")):
            async with sched.lease(ref("/m/b")):
                a, b = engine.placements
                assert a.full and 0 < b.n_gpu_layers < b.total_layers
                assert a.vram + b.vram <= 1.5 * GiB
                assert not engine.runners[0].closed
        assert "/m/b gets" in caplog.text and "beside the loaded models" in caplog.text
    asyncio.run(main())


def test_two_models_that_fit_together_stay_loaded() -> None:
    async def main() -> None:
        sched, engine = make(8)
        for name in ("/m/a", "/m/b"):
            async with sched.lease(ref(name)):
                pass
        assert [p.full for p in engine.placements] == [True, True]
        assert not any(r.closed for r in engine.runners)
    asyncio.run(main())


def test_num_gpu_zero_loads_on_the_cpu_and_takes_no_device_memory() -> None:
    async def main() -> None:
        sched, engine = make(1.5)
        async with sched.lease(ref("/m/a")):
            pass
        async with sched.lease(ref("/m/b", num_gpu=0)):
            pass
        assert engine.placements[1].n_gpu_layers == 0
        assert not engine.runners[0].closed
    asyncio.run(main())


def test_an_engine_without_devices_loads_as_before() -> None:
    async def main() -> None:
        engine = GpuEngine(table=[])
        sched = Scheduler(engine, Settings(), memory_probe=lambda: 10**12)
        async with sched.lease(ref("/m/a")):
            pass
        assert engine.placements == [] and len(engine.runners) == 1
    asyncio.run(main())

"""What a runner reports of llama.cpp's allocations (offload.py) and how /api/ps reads it (proc.py)."""

from __future__ import annotations

from typing import Any

from corral.engine.llamacpp.offload import GpuParams, LoadLog
from corral.engine.llamacpp.proc import LlamaCppRunner
from corral.fit import Placement

MiB = 1024 * 1024
# lines as llama.cpp 0.3.36's vendored build logs them (Vulkan on lavapipe, 20 of 31 layers)
LOG = """load_tensors: offloading 20 repeating layers to GPU
load_tensors: offloaded 20/31 layers to GPU
load_tensors:   CPU_Mapped model buffer size =    98.00 MiB
load_tensors:      Vulkan0 model buffer size =    40.00 MiB
llama_context: Vulkan_Host  output buffer size =     0.50 MiB
llama_kv_cache:      Vulkan0 KV buffer size =     7.50 MiB
llama_kv_cache:          CPU KV buffer size =     3.75 MiB
sched_reserve:      Vulkan0 compute buffer size =    16.00 MiB
sched_reserve: Vulkan_Host compute buffer size =   100.00 MiB
"""


def test_the_load_log_gives_layers_and_buffers_per_device() -> None:
    log = LoadLog(install=False)
    for line in LOG.splitlines():
        log.feed(line)
    r = log.report(["Vulkan0"])
    assert (r["layers"], r["total_layers"]) == (20, 31)
    assert r["device_bytes"] == {"Vulkan0": int(63.5 * MiB)}
    assert r["host_bytes"] == int(98 * MiB + 0.5 * MiB + 3.75 * MiB + 100 * MiB)
    assert LoadLog(install=False).report([])["device_bytes"] == {}


def runner(info: dict[str, Any], placement: Placement | None = None) -> LlamaCppRunner:
    r = object.__new__(LlamaCppRunner)
    r.info, r.placement = info, placement
    return r


def test_ps_figures_from_the_report() -> None:
    partial = runner({"offload": {"layers": 20, "total_layers": 31, "device_bytes": {"Vulkan0": 60},
                                  "host_bytes": 40}})
    assert (partial.memory_bytes, partial.vram_bytes, partial.device_bytes) == (100, 60, {"Vulkan0": 60})
    full = runner({"offload": {"layers": 31, "total_layers": 31, "device_bytes": {"Vulkan0": 90}, "host_bytes": 10}})
    assert (full.memory_bytes, full.vram_bytes) == (100, 100)  # every layer offloaded: 100% GPU
    planned = runner({"ready": True}, Placement(5, 31, device_bytes=(("CUDA0", 7),)))
    assert planned.device_bytes == {"CUDA0": 7}  # a runner that reported nothing: the plan


def test_gpu_params_choose_no_device_for_zero_layers() -> None:
    class P:
        n_gpu_layers = split_mode = main_gpu = 0
        tensor_split: Any = None

    cpu = GpuParams().apply(P())
    assert (cpu.n_gpu_layers, cpu.split_mode, cpu.main_gpu) == (0, 0, -1)
    gpu = GpuParams.parse(12, "layer", 0, "0.25,0.75").apply(P())
    assert (gpu.n_gpu_layers, gpu.split_mode) == (12, 1)
    assert [gpu.tensor_split[i] for i in range(2)] == [0.25, 0.75]

"""The accelerator list is llama.cpp's own offload order (devices.py), so `main_gpu` and
`tensor_split` indices mean what llama.cpp takes them to mean."""

from __future__ import annotations

from typing import Any

from corral.engine.llamacpp.devices import offload_devices


def dev(name: str, kind: str, registry: str) -> dict[str, Any]:
    return {"name": name, "description": name, "kind": kind, "registry": registry, "free": 1, "total": 2}


def test_rpc_servers_first_then_gpus_and_integrated_gpus_only_without_a_discrete_one() -> None:
    raw = [dev("CPU", "cpu", "CPU"), dev("Vulkan0", "igpu", "Vulkan"), dev("CUDA0", "gpu", "CUDA"),
           dev("RPC0", "gpu", "RPC"), dev("BLAS", "accel", "BLAS")]
    assert [(d.index, d.name) for d in offload_devices(raw)] == [(0, "RPC0"), (1, "CUDA0")]
    no_dgpu = [dev("CPU", "cpu", "CPU"), dev("Vulkan0", "igpu", "Vulkan")]
    assert [d.name for d in offload_devices(no_dgpu)] == ["Vulkan0"]
    assert offload_devices([dev("CPU", "cpu", "CPU")]) == []

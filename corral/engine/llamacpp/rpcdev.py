"""RPC worker devices inside a runner process: register them and offload layers to them.

Runs only in a runner child (the one process a dead worker may abort). For each worker endpoint
it calls ggml's `ggml_backend_rpc_add_server` (registers the worker's devices), reads each
device's memory through `ggml_backend_dev_memory` (which asks the worker:
`ggml_backend_rpc_get_device_memory`), plans the split (`rpc.plan_split`) and fills
`llama_model_params` (`devices`, `n_gpu_layers`, `split_mode`, `tensor_split`). llama-cpp-python
does not bind these calls; like `threadpool.py` they are bound with ctypes against the copies of
the libraries llama_cpp already mapped. Needs a llama.cpp built with `-DGGML_RPC=ON`
(scripts/build_backend.sh, used through LLAMA_CPP_LIB_PATH).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

import llama_cpp as ll

from corral.errors import CorralError

from .cstruct import set_fields
from .rpc import Device, Plan, plan_split
from .threadpool import loaded_library

log = logging.getLogger(__name__)
NO_RPC = (
    "this llama.cpp build has no RPC backend (libggml-rpc.so), so it cannot use CORRAL_RPC_WORKERS: "
    "build one with scripts/build_backend.sh cpu-rpc (or any variant) and start the server with it"
)


def _bind() -> tuple[Any, Any]:
    ll.llama_backend_init()
    try:
        rpc = ctypes.CDLL(loaded_library("ggml-rpc"), mode=os.RTLD_NOLOAD)
        base = ctypes.CDLL(loaded_library("ggml-base"), mode=os.RTLD_NOLOAD)
    except OSError:
        raise CorralError(NO_RPC) from None
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    base.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_name.restype = ctypes.c_char_p
    base.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
    ]
    base.ggml_backend_dev_memory.restype = None
    return rpc, base


def layer_bytes(model_path: str, n_ctx: int) -> tuple[int, int]:
    """(n_layer, bytes per layer): weights plus f16 KV cache of `n_ctx` tokens, spread over the layers."""
    from corral.gguf import read_gguf

    info = read_gguf(model_path)
    n_layer = int(info.block_count or 0)
    if n_layer <= 0:
        raise CorralError(f"cannot split {model_path} over RPC workers: its header has no block_count")
    total = Path(model_path).stat().st_size + info.kv_bytes_per_token() * n_ctx
    return n_layer, total // (n_layer + 1)


class RpcOffload:
    """The workers' devices of one runner and the split of its layers over them."""

    def __init__(self, endpoints: list[str], shares: tuple[float, ...], *, model_path: str, n_ctx: int) -> None:
        # A worker that dies makes ggml abort this process; a gdb backtrace (ggml forks one when gdb
        # is installed) would only delay the error the server reports.
        os.environ.setdefault("GGML_NO_BACKTRACE", "1")
        rpc, base = _bind()
        self._handles: list[int] = []
        devices: list[Device] = []
        for ep in endpoints:
            reg = rpc.ggml_backend_rpc_add_server(ep.encode())
            if not reg:
                raise CorralError(f"RPC worker {ep} reports no devices")
            for i in range(int(base.ggml_backend_reg_dev_count(reg))):
                dev = base.ggml_backend_reg_dev_get(reg, i)
                free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
                base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
                name = (base.ggml_backend_dev_name(dev) or b"RPC").decode(errors="replace")
                devices.append(Device(ep, name, int(free.value), int(total.value)))
                self._handles.append(int(dev))
        if len(devices) > int(ll.llama_max_devices()):
            raise CorralError(f"{len(devices)} RPC devices is more than llama.cpp's {ll.llama_max_devices()}")
        n_layer, per_layer = layer_bytes(model_path, n_ctx)
        self.plan: Plan = plan_split(n_layer, per_layer, devices, shares, endpoints)
        self._devices = (ctypes.c_void_p * (len(self._handles) + 1))(*self._handles, None)
        split = list(self.plan.tensor_split) + [0.0] * (int(ll.llama_max_devices()) - len(devices))
        self._split = (ctypes.c_float * len(split))(*split)
        log.info("RPC split: %s", self.describe())

    def apply(self, params: Any) -> Any:
        """Point `llama_model_params` at the workers' devices with the planned split."""
        return set_fields(
            params,
            devices=ctypes.addressof(self._devices),
            n_gpu_layers=self.plan.n_gpu_layers,
            split_mode=ll.LLAMA_SPLIT_MODE_LAYER,
            main_gpu=0,
            tensor_split=ctypes.cast(self._split, ctypes.POINTER(ctypes.c_float)),
        )

    def report(self) -> dict[str, Any]:
        """For the runner's ready line (and /api/ps): layers per worker device and on this machine."""
        p = self.plan
        return {
            "layers": p.n_units,
            "local_layers": p.local_layers,
            "workers": [
                {"endpoint": d.endpoint, "device": d.name, "free": d.free, "total": d.total, "layers": n}
                for d, n in zip(p.devices, p.layers, strict=True)
            ],
        }

    def describe(self) -> str:
        p = self.plan
        parts = [f"{n} on {d.endpoint} ({d.name}, {d.free // (1024 * 1024)} MiB free)"
                 for d, n in zip(p.devices, p.layers, strict=True)]
        return f"{p.local_layers}/{p.n_units} layers local, " + ", ".join(parts)


def from_args(workers: list[str], split: str, *, model_path: str, n_ctx: int) -> RpcOffload | None:
    """The runner's `--rpc` workers and `--rpc-split` shares, or None without workers."""
    if not workers:
        return None
    shares = tuple(float(x) for x in split.split(",") if x.strip()) if split else ()
    return RpcOffload(workers, shares, model_path=model_path, n_ctx=n_ctx)


def ready_fields(offload: RpcOffload | None) -> dict[str, Any]:
    return {"rpc": offload.report()} if offload is not None else {}

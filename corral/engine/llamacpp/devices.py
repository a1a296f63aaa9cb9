"""The accelerators ggml sees in this process, through its backend device API.

llama-cpp-python 0.3.36 does not bind `ggml_backend_dev_*`, so they are bound here with ctypes
against the copies of libggml that `llama_cpp` already loaded (see `threadpool.loaded_library`).
The list is the one llama.cpp offloads to, in its order (RPC servers first, then GPUs, then
integrated GPUs when there is no discrete one), so a `Device.index` is what `main_gpu` and
`tensor_split` count. `CUDA_VISIBLE_DEVICES` and `GGML_VK_VISIBLE_DEVICES` act inside ggml itself.

`python -m corral.engine.llamacpp.devices` prints the table as JSON (the server runs it once at
start with the backend's libraries, to log the devices and fit models before any runner exists).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

from corral.fit import Device

from .threadpool import loaded_library

KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


def _bind() -> tuple[Any, Any]:
    import llama_cpp as ll

    ll.llama_backend_init()
    ggml = ctypes.CDLL(loaded_library("ggml"), mode=os.RTLD_NOLOAD)
    base = ctypes.CDLL(loaded_library("ggml-base"), mode=os.RTLD_NOLOAD)
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_count.argtypes = []
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(base, fn).restype = ctypes.c_char_p
        getattr(base, fn).argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_type.restype = ctypes.c_int
    base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_memory.restype = None
    base.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.POINTER(ctypes.c_size_t)]
    base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_name.restype = ctypes.c_char_p
    base.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    return ggml, base


def all_devices() -> list[dict[str, Any]]:
    """Every ggml device (the CPU included) with its registry name, kind and memory."""
    ggml, base = _bind()
    out = []
    for i in range(int(ggml.ggml_backend_dev_count())):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = base.ggml_backend_dev_backend_reg(dev)
        out.append({
            "name": (base.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
            "description": (base.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
            "kind": KINDS.get(int(base.ggml_backend_dev_type(dev)), "unknown"),
            "registry": (base.ggml_backend_reg_name(reg) or b"").decode(errors="replace") if reg else "",
            "free": int(free.value),
            "total": int(total.value),
        })
    return out


def offload_devices(raw: list[dict[str, Any]] | None = None) -> list[Device]:
    """The devices llama.cpp offloads to by default, in its order (see the module doc)."""
    raw = all_devices() if raw is None else raw
    rpc = [d for d in raw if d["kind"] == "gpu" and d["registry"] == "RPC"]
    gpus = [d for d in raw if d["kind"] == "gpu" and d["registry"] != "RPC"]
    igpus = [d for d in raw if d["kind"] == "igpu"] if not gpus else []
    return [
        Device(i, d["name"], d["description"], d["kind"], d["total"], d["free"])
        for i, d in enumerate(rpc + gpus + igpus)
    ]


def main() -> int:
    raw = all_devices()
    json.dump({"all": raw, "offload": [d.to_dict() for d in offload_devices(raw)]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

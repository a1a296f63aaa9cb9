"""Runner side of GPU offload: the llama.cpp parameters for a placement, and what llama.cpp says
it allocated.

`GpuParams` turns the server's placement (`--n-gpu-layers`, `--split-mode`, `--main-gpu`,
`--tensor-split`) into `llama_model_params` fields; 0 layers means no device at all (split mode
none with main_gpu -1), so a GPU build computes on the CPU exactly as the CPU build does.

`LoadLog` replaces llama-cpp-python's log callback: every line still goes to stderr (the runner's
log file), and the lines that report buffers (`<buffer> model|KV|compute|output buffer size = X
MiB`) and the offload count (`offloaded N/M layers to GPU`) are collected, so the runner can report
what llama.cpp really allocated on each device (the server's `/api/ps` figures).
"""

from __future__ import annotations

import ctypes
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as ll

SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}
_BUFFER = re.compile(r"^\w+:\s+(\S+)\s+(?:model|KV|compute|output|RS|LoRA) buffer size =\s+([0-9.]+) MiB")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


@dataclass
class GpuParams:
    n_gpu_layers: int = 0
    split_mode: str = "layer"
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    _split: Any = field(default=None, repr=False, compare=False)  # the C array params points to

    @classmethod
    def parse(cls, n_gpu_layers: int, split_mode: str, main_gpu: int, tensor_split: str) -> GpuParams:
        split = tuple(float(x) for x in tensor_split.split(",") if x.strip()) if tensor_split else ()
        return cls(max(n_gpu_layers, 0), split_mode, main_gpu, split)

    def apply(self, params: Any) -> Any:
        """Set the offload fields of `params` (a llama_model_params); keeps the split array alive."""
        if self.n_gpu_layers <= 0:
            params.n_gpu_layers = 0
            params.split_mode = SPLIT_MODES["none"]
            params.main_gpu = -1  # llama.cpp: no devices at all
            return params
        params.n_gpu_layers = self.n_gpu_layers
        params.split_mode = SPLIT_MODES[self.split_mode]
        params.main_gpu = self.main_gpu
        if self.tensor_split:
            n = max(int(ll.llama_max_devices()), len(self.tensor_split))
            self._split = (ctypes.c_float * n)(*self.tensor_split)
            params.tensor_split = ctypes.cast(self._split, ctypes.POINTER(ctypes.c_float))
        return params


class LoadLog:
    """Forward llama.cpp/ggml log lines to stderr and collect the buffer sizes they report."""

    def __init__(self, *, install: bool = True) -> None:
        self.buffers: dict[str, int] = {}
        self.offloaded: tuple[int, int] | None = None
        self._partial = ""
        self._callback = ll.llama_log_callback(self._on_log)
        if install:
            ll.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, user_data: Any) -> None:
        chunk = text.decode("utf-8", errors="replace")
        sys.stderr.write(chunk)
        self._partial += chunk
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.feed(line)

    def feed(self, line: str) -> None:
        m = _BUFFER.match(line.strip())
        if m:
            name = m.group(1)
            self.buffers[name] = self.buffers.get(name, 0) + int(float(m.group(2)) * 1024 * 1024)
            return
        o = _OFFLOADED.search(line)
        if o:
            self.offloaded = (int(o.group(1)), int(o.group(2)))

    def report(self, devices: list[str]) -> dict[str, Any]:
        """What llama.cpp allocated: bytes per buffer, per device (`devices` are the accelerator
        names) and on the host (CPU, mapped and pinned host buffers)."""
        on_device = {d: sum(b for n, b in self.buffers.items() if n == d) for d in devices}
        return {
            "layers": self.offloaded[0] if self.offloaded else 0,
            "total_layers": self.offloaded[1] if self.offloaded else 0,
            "buffers": dict(self.buffers),
            "device_bytes": {d: b for d, b in on_device.items() if b},
            "host_bytes": sum(b for n, b in self.buffers.items() if n not in on_device),
        }


def add_arguments(p: Any) -> None:
    """The runner's offload options (an argparse parser)."""
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload (0 = no device at all)")
    p.add_argument("--split-mode", choices=["layer", "none", "row"], default="layer")
    p.add_argument("--main-gpu", type=int, default=0, help="the device used alone with --split-mode none")
    p.add_argument("--tensor-split", default="", help="share of the layers per device, comma separated")


def gpu_params(args: Any) -> GpuParams:
    return GpuParams.parse(args.n_gpu_layers, args.split_mode, args.main_gpu, args.tensor_split)


def ready_fields(log: LoadLog) -> dict[str, Any]:
    """The runner's ready line additions: the devices ggml sees here and what llama.cpp put on them."""
    from .devices import offload_devices

    try:
        devices = offload_devices()
    except (OSError, AttributeError) as exc:  # a library without the device API: report nothing
        sys.stderr.write(f"device discovery failed: {exc}\n")
        devices = []
    return {"devices": [d.to_dict() for d in devices], "offload": log.report([d.name for d in devices])}

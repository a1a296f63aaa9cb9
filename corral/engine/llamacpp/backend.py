"""Which llama.cpp build the runners use (`CORRAL_BACKEND`), and what it finds on this machine.

The pip-installed llama-cpp-python wheel (CPU) is the default. Accelerated builds of the same
llama.cpp are separate library sets made by `scripts/build_backend.sh VARIANT` under
`<backends_dir>/<variant>-<llama-cpp-python version>/lib`; a runner uses one through
`LLAMA_CPP_LIB_PATH` and `MTMD_CPP_LIB` (honoured by llama-cpp-python), so the Python bindings are
the same version and pip's wheel cache never mixes a CPU wheel with a GPU build.

`auto` takes a built cuda variant, else a built vulkan one, and keeps it only if ggml finds an
accelerator through it (a Vulkan build on a machine whose only Vulkan device is the CPU would just
be a slower start), else the wheel (on macOS the wheel is built with Metal: its devices are
discovered too); `cpu`, `cuda`, `vulkan`, `cpu-rpc` force a choice (`cpu`: no device at all).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.engine.base import LoadSpec
from corral.engine.llamacpp.tuning import RunnerTuning
from corral.errors import CorralError
from corral.fit import Device, FitRequest, GiB, Layout, Placement, fit, layout_from_gguf, usable

log = logging.getLogger(__name__)
CHOICES = ("auto", "cpu", "cuda", "vulkan", "cpu-rpc")
AUTO_ORDER = ("cuda", "vulkan")
DISCOVERY_TIMEOUT = 120.0
VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "GGML_VK_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


def bindings_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def variant_dir(backends_dir: Path, variant: str, version: str | None = None) -> Path:
    return Path(backends_dir) / f"{variant}-{version or bindings_version()}"


def is_built(path: Path) -> bool:
    return (path / "variant.json").is_file() and (path / "lib" / "libllama.so").is_file()


@dataclass(frozen=True)
class Backend:
    """A llama.cpp build: `lib` None is the wheel's own libraries."""

    name: str = "cpu"
    lib: Path | None = None
    devices: tuple[Device, ...] = ()  # the accelerators it offloads to (filled by `discover`)
    all_devices: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a runner process that uses this build."""
        env = dict(os.environ if base is None else base)
        if self.lib is not None:
            env["LLAMA_CPP_LIB_PATH"] = str(self.lib)
            env["MTMD_CPP_LIB"] = str(self.lib)
        return env


def discover(backend: Backend, python: str = sys.executable, timeout: float = DISCOVERY_TIMEOUT) -> Backend:
    """Ask ggml, in a child process using `backend`'s libraries, which devices it sees."""
    argv = [python, "-m", "corral.engine.llamacpp.devices"]
    try:
        out = subprocess.run(argv, env=backend.env(), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CorralError(f"device discovery with the {backend.name} build failed: {exc}") from None
    if out.returncode != 0:
        tail = " ".join(out.stderr.strip().splitlines()[-3:])
        raise CorralError(f"device discovery with the {backend.name} build failed (exit {out.returncode}): {tail}")
    obj = json.loads(out.stdout.strip().splitlines()[-1])
    devices = tuple(Device.from_dict(d) for d in obj["offload"])
    return Backend(backend.name, backend.lib, devices, tuple(obj["all"]))


def may_have_device(variant: str, environ: Mapping[str, str], dev: Path = Path("/dev")) -> bool:
    """Whether `auto` should ask `variant` for devices (a child process that loads the driver):
    not on a machine without a GPU device node, where only the CPU itself (lavapipe) could answer,
    unless GGML_VK_VISIBLE_DEVICES picks a Vulkan device explicitly."""
    nvidia = (dev / "nvidiactl").exists() or any(dev.glob("nvidia[0-9]*"))
    if variant == "cuda":
        return nvidia
    return nvidia or any(dev.glob("dri/renderD*")) or bool(environ.get("GGML_VK_VISIBLE_DEVICES"))


def select(
    choice: str,
    backends_dir: Path,
    *,
    python: str = sys.executable,
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
) -> Backend:
    """The build to use for `choice` (see the module doc), with its devices discovered."""
    environ = os.environ if environ is None else environ
    if choice not in CHOICES:
        raise CorralError(f"unknown backend {choice!r} (choose one of {', '.join(CHOICES)})")
    if choice == "cpu":
        return Backend()
    if choice != "auto":
        path = variant_dir(backends_dir, choice)
        if not is_built(path):
            raise CorralError(f"CORRAL_BACKEND={choice}, but there is no {choice} build at {path}: "
                              f"run scripts/build_backend.sh {choice} (or make backend)")
        return discover(Backend(choice, path / "lib"), python)
    for name in AUTO_ORDER:
        path = variant_dir(backends_dir, name)
        if not is_built(path) or not may_have_device(name, environ):
            continue
        try:
            found = discover(Backend(name, path / "lib"), python)
        except CorralError as exc:
            log.warning("not using the %s build: %s", name, exc)
            continue
        if found.devices:
            return found
        log.info("the %s build finds no accelerator here; using the CPU build", name)
    if platform == "darwin":  # the wheel: CPU-only on Linux; on macOS llama.cpp's default build, with Metal
        try:
            return discover(Backend(), python)
        except CorralError as exc:
            log.warning("no Metal device: %s", exc)
    return Backend()


def log_devices(backend: Backend, host_total: int, host_free: int, *, overhead: int = 0, limit: int = 0) -> None:
    """One line per compute device, as Ollama logs them at start ("inference compute"), with what
    corral may use of it (`usable`: less CORRAL_GPU_OVERHEAD, at most CORRAL_GPU_MEMORY_LIMIT)."""
    for d, u in zip(backend.devices, usable(backend.devices, overhead=overhead, limit=limit), strict=True):
        log.info('inference compute id=%d library=%s name=%s description="%s" type=%s total="%.1f GiB" '
                 'available="%.1f GiB" usable="%.2f GiB"', d.index, backend.name, d.name, d.description, d.kind,
                 d.total / GiB, d.free / GiB, u.free / GiB)
    if not backend.devices:
        log.info('inference compute id=cpu library=%s total="%.1f GiB" available="%.1f GiB"',
                 backend.name, host_total / GiB, host_free / GiB)
    visible = {k: os.environ[k] for k in VISIBILITY_VARS if k in os.environ}
    if visible:
        log.info("device visibility: %s", " ".join(f"{k}={v}" for k, v in visible.items()))


@functools.lru_cache(maxsize=32)
def _layout(path: str, mtime_ns: int) -> Layout:
    from corral.gguf import read_gguf

    return layout_from_gguf(read_gguf(path))


def model_layout(path: Path) -> Layout:
    return _layout(str(path), Path(path).stat().st_mtime_ns)


def place(spec: LoadSpec, devices: Sequence[Device], tuning: RunnerTuning | None = None) -> Placement:
    """The placement of `spec` on `devices` (whose `free` is what it may use)."""
    tuning = tuning or RunnerTuning()
    layout = model_layout(spec.model_path)
    o = spec.options
    cells = o.num_ctx * (1 if spec.embedding else max(spec.num_parallel, 1))
    req = FitRequest(
        n_ctx=cells,
        n_ubatch=min(o.num_batch, 512) if not spec.embedding else o.num_ctx,
        kv_cache_type=tuning.kv_type,
        flash_attn=tuning.flash_attention is not False,
        num_gpu=o.num_gpu,
        main_gpu=o.main_gpu,
    )
    return fit(layout, devices, req)


def placement_argv(p: Placement | None) -> list[str]:
    """The runner arguments for a placement (none: no device)."""
    if p is None or p.n_gpu_layers <= 0:
        return []
    argv = ["--n-gpu-layers", str(p.n_gpu_layers), "--split-mode", p.split_mode, "--main-gpu", str(p.main_gpu)]
    if p.tensor_split:
        argv += ["--tensor-split", ",".join(f"{s:.6f}" for s in p.tensor_split)]
    return argv


class Accelerators:
    """The GPU side of `LlamaCppEngine`: the backend's devices and the fit of a spec on them."""

    def __init__(self, backend: Backend | None = None, *, overhead: int = 0, limit: int = 0,
                 tuning: RunnerTuning | None = None) -> None:
        self.backend = backend or Backend()
        self.tuning = tuning or RunnerTuning()
        self.gpu_overhead = max(overhead, 0)
        self.gpu_memory_limit = max(limit, 0)

    def devices(self) -> list[Device]:
        """The accelerators, with `free` = what corral may use when none of its runners are loaded."""
        return usable(self.backend.devices, overhead=self.gpu_overhead, limit=self.gpu_memory_limit)

    def place(self, spec: LoadSpec, used: Mapping[str, int] | None = None) -> Placement:
        """Where `spec`'s layers go, given the bytes corral's loaded runners hold on each device."""
        devices = usable(self.backend.devices, overhead=self.gpu_overhead, limit=self.gpu_memory_limit, used=used)
        return place(spec, devices, self.tuning)

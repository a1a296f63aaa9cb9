"""The worker side: llama.cpp's RPC server run in this process through ctypes.

`ggml_backend_rpc_start_server` (libggml-rpc, `-DGGML_RPC=ON`) is what the `rpc-server` tool calls;
binding it here instead of running that binary lets corral pick the devices the same way, report a
smaller memory size (`--mem`, which that version of the tool lacks) and stay one `corral` command.
The server serves one client (one runner) at a time and has no authentication: the CLI decides
who may bind where. Needs the library directory of an RPC build (scripts/build_backend.sh).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import CorralError

RPC_LIB = "libggml-rpc.so"
DEVICE_TYPE_CPU, DEVICE_TYPE_GPU, DEVICE_TYPE_ACCEL = 0, 1, 3  # enum ggml_backend_dev_type
GET_MEMORY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))
GET_MEMORY_SLOT = 2  # struct ggml_backend_device_i: get_name, get_description, get_memory, ...


def default_backends_dir() -> Path:
    return Path(os.environ.get("CORRAL_BACKENDS_DIR") or Path.home() / ".cache" / "corral" / "backends")


def rpc_lib_dirs(candidates: Iterable[Path]) -> list[Path]:
    """The directories among `candidates` (library dirs or variant dirs with lib/) that have libggml-rpc."""
    out: list[Path] = []
    for c in candidates:
        for d in (c, c / "lib"):
            if (d / RPC_LIB).is_file() and (d / "libggml.so").exists() and d not in out:
                out.append(d)
    return out


def find_rpc_lib(explicit: str | None = None, backends: Path | None = None) -> Path:
    """The library directory of an RPC build: `explicit`, else $LLAMA_CPP_LIB_PATH, else the
    installed llama_cpp package, else a built variant under the backends directory (cpu-rpc first)."""
    if explicit:
        found = rpc_lib_dirs([Path(explicit)])
        if not found:
            raise CorralError(f"{explicit} has no {RPC_LIB} (a llama.cpp build with -DGGML_RPC=ON)")
        return found[0]
    candidates: list[Path] = []
    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        candidates.append(Path(os.environ["LLAMA_CPP_LIB_PATH"]))
    candidates += _package_lib_dirs()
    candidates += built_variants(backends or default_backends_dir())
    found = rpc_lib_dirs(candidates)
    if not found:
        raise CorralError(
            f"no llama.cpp build with RPC support found ({RPC_LIB}): build one with "
            "scripts/build_backend.sh cpu-rpc (or cuda, vulkan), or pass --lib-dir DIR"
        )
    return found[0]


def built_variants(root: Path, version: str | None = None) -> list[Path]:
    """The finished builds of scripts/build_backend.sh for these bindings (`<variant>-<version>` with
    a variant.json; a copy still in progress has neither), cpu-rpc first."""
    if not root.is_dir():
        return []
    if version is None:
        import importlib.metadata

        version = importlib.metadata.version("llama-cpp-python")
    found = [p for p in root.iterdir() if p.name.endswith(f"-{version}") and (p / "variant.json").is_file()]
    return sorted(found, key=lambda p: (not p.name.startswith("cpu-rpc-"), p.name))


def _package_lib_dirs() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    pkg = Path(next(iter(spec.submodule_search_locations)))
    return [pkg / "lib", pkg.parent / "lib"]


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    description: str
    type: int
    free: int
    total: int


class RpcLibrary:
    """libggml (with its backends) and libggml-rpc from one build directory."""

    def __init__(self, lib_dir: Path) -> None:
        self.lib_dir = lib_dir
        self.ggml = ctypes.CDLL(str(lib_dir / "libggml.so"), mode=os.RTLD_GLOBAL)
        self.rpc = ctypes.CDLL(str(lib_dir / RPC_LIB), mode=os.RTLD_GLOBAL)
        g = self.ggml
        g.ggml_backend_load_all.restype = None
        g.ggml_backend_dev_count.restype = ctypes.c_size_t
        g.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        g.ggml_backend_dev_get.restype = ctypes.c_void_p
        for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(g, fn).argtypes = [ctypes.c_void_p]
            getattr(g, fn).restype = ctypes.c_char_p
        g.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        g.ggml_backend_dev_type.restype = ctypes.c_int
        g.ggml_backend_dev_memory.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
        ]
        g.ggml_backend_dev_memory.restype = None
        self.rpc.ggml_backend_rpc_start_server.argtypes = [
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
        ]
        self.rpc.ggml_backend_rpc_start_server.restype = None
        g.ggml_backend_load_all()
        self._keep: list[Any] = []  # callbacks that C holds pointers to

    def devices(self) -> list[tuple[int, DeviceInfo]]:
        out = []
        for i in range(int(self.ggml.ggml_backend_dev_count())):
            dev = int(self.ggml.ggml_backend_dev_get(i))
            out.append((dev, self.info(dev)))
        return out

    def info(self, dev: int) -> DeviceInfo:
        g = self.ggml
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        return DeviceInfo(
            name=(g.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
            description=(g.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
            type=int(g.ggml_backend_dev_type(dev)),
            free=int(free.value),
            total=int(total.value),
        )

    def choose(self, names: list[str]) -> list[int]:
        """Devices by name, else rpc-server's rule: every accelerator (GPU), else the CPU."""
        all_devs = self.devices()
        if names:
            by_name = {info.name.lower(): dev for dev, info in all_devs}
            missing = [n for n in names if n.lower() not in by_name]
            if missing:
                known = ", ".join(f"{i.name} ({i.description})" for _, i in all_devs)
                raise CorralError(f"unknown device {', '.join(missing)}; this build has: {known}")
            return [by_name[n.lower()] for n in names]
        gpus = [dev for dev, info in all_devs if info.type not in (DEVICE_TYPE_CPU, DEVICE_TYPE_ACCEL)]
        if gpus:
            return gpus
        return [dev for dev, info in all_devs if info.type == DEVICE_TYPE_CPU][:1]

    def cap_memory(self, dev: int, limit: int) -> None:
        """Make `dev` report at most `limit` bytes (what clients size their split by).

        Replaces the device's `get_memory` entry in its interface table (ggml-backend-impl.h) with
        one that caps the real answer, then checks through the public API that the cap shows.
        """
        table = ctypes.cast(dev, ctypes.POINTER(ctypes.c_void_p))
        original = GET_MEMORY(table[GET_MEMORY_SLOT])

        def capped(d: int | None, free: Any, total: Any) -> None:
            original(d, free, total)
            free[0] = min(free[0], limit)
            total[0] = min(total[0], limit)

        hook = GET_MEMORY(capped)
        self._keep += [original, hook]
        table[GET_MEMORY_SLOT] = ctypes.cast(hook, ctypes.c_void_p).value
        got = self.info(dev)
        if got.total > limit or got.free > limit:
            table[GET_MEMORY_SLOT] = ctypes.cast(original, ctypes.c_void_p).value
            raise CorralError("--mem is not supported by this llama.cpp build (the device ignored the limit)")

    def serve(self, endpoint: str, devices: list[int], *, threads: int, cache_dir: str | None) -> threading.Thread:
        """Start the server on a daemon thread (it never returns unless it cannot bind)."""
        arr = (ctypes.c_void_p * len(devices))(*devices)
        self._keep.append(arr)
        _line_buffered_stdout()

        def run() -> None:
            self.rpc.ggml_backend_rpc_start_server(
                endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, len(devices), arr
            )

        thread = threading.Thread(target=run, name="rpc-server", daemon=True)
        thread.start()
        return thread


def _line_buffered_stdout() -> None:
    """The server reports clients with printf; make those lines appear as they happen."""
    sys.stdout.flush()
    try:
        libc = ctypes.CDLL(None)
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stdout, None, 1, 0)  # _IOLBF
    except (OSError, ValueError, AttributeError):
        pass

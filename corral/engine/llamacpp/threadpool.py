"""A persistent ggml CPU threadpool attached to a llama context, as llama-server does.

Without one, ggml builds a throw-away pool for every graph compute (every `llama_decode`), so the
worker threads start cold each step. llama-cpp-python 0.3.36 does not bind these calls
(`llama_attach_threadpool` is a TODO there), so they are bound here with ctypes against the
very copies of the shared libraries that `llama_cpp` loaded (opening the package's unversioned
`.so` files by path would map second, independent copies of ggml into the process). Any failure
leaves the context on ggml's default behaviour.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pathlib
from typing import Any

import llama_cpp as ll

from .cstruct import set_fields

log = logging.getLogger(__name__)
GGML_MAX_N_THREADS = 512


class ThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


def loaded_library(stem: str) -> str:
    """The path of the already mapped shared library `lib<stem>.so*` (Linux: /proc/self/maps)."""
    prefix = f"lib{stem}.so"
    for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)  # address perms offset dev inode path
        if len(parts) < 6:
            continue
        path = parts[5]
        name = path.rsplit("/", 1)[-1]
        if name == prefix or name.startswith(prefix + "."):
            return path
    raise OSError(f"{prefix} is not loaded")


def _open_loaded(stem: str) -> Any:
    return ctypes.CDLL(loaded_library(stem), mode=os.RTLD_NOLOAD)


def _libs() -> tuple[Any, Any, Any]:
    ll.llama_backend_init()  # maps the CPU backend (idempotent)
    base = _open_loaded("ggml-base")
    cpu = _open_loaded("ggml-cpu")
    llama = _open_loaded("llama")
    base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
    base.ggml_threadpool_params_default.restype = ThreadpoolParams
    cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(ThreadpoolParams)]
    cpu.ggml_threadpool_new.restype = ctypes.c_void_p
    cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
    cpu.ggml_threadpool_free.restype = None
    llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    llama.llama_attach_threadpool.restype = None
    llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    llama.llama_detach_threadpool.restype = None
    return base, cpu, llama


class Threadpool:
    """Owns one ggml threadpool; `attach(ctx)` makes a context use it for decode and prefill."""

    def __init__(self, n_threads: int, poll: int = 50) -> None:
        self.pool: int | None = None
        self._contexts: list[Any] = []
        try:
            self._base, self._cpu, self._llama = _libs()
            params = self._base.ggml_threadpool_params_default(n_threads)
            set_fields(params, poll=poll)
            pool = self._cpu.ggml_threadpool_new(ctypes.byref(params))
            self.pool = int(pool) if pool else None
        except (OSError, AttributeError) as exc:
            log.warning("persistent threadpool unavailable, using ggml's per-call pool: %s", exc)

    def attach(self, ctx: Any) -> bool:
        if self.pool is None:
            return False
        handle = ctypes.cast(ctx, ctypes.c_void_p)
        self._llama.llama_attach_threadpool(handle, self.pool, self.pool)
        self._contexts.append(handle)
        return True

    def close(self) -> None:
        if self.pool is None:
            return
        for handle in self._contexts:
            self._llama.llama_detach_threadpool(handle)
        self._contexts.clear()
        self._cpu.ggml_threadpool_free(self.pool)
        self.pool = None

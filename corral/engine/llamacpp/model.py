"""Thin ownership wrapper over llama.cpp's low-level C API (ctypes, via llama-cpp-python).

Owns the native handles of one runner: the model, its vocabulary, the main context (one unified KV
cache shared by all sequences), an optional embedding context, and one preallocated batch filled
through numpy views. Every method must be called from the single thread that owns the model.
Does not schedule, sample or know about requests; see `batch.py` for that.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from typing import Any

import llama_cpp as ll
import numpy as np
import numpy.typing as npt

from corral.errors import BadRequestError, CorralError

from .cstruct import new, set_fields
from .offload import GpuParams
from .rpcdev import RpcOffload
from .threadpool import Threadpool

log = logging.getLogger(__name__)

KV_TYPES = {
    "": ll.GGML_TYPE_F16,
    "f16": ll.GGML_TYPE_F16,
    "q8_0": ll.GGML_TYPE_Q8_0,
    "q4_0": ll.GGML_TYPE_Q4_0,
}
FLASH = {"auto": -1, "off": 0, "on": 1}
# `use_mmap` unset = llama.cpp's default (AUTO: mmap unless a device cannot map host memory),
# true = always mmap, false = read the weights into memory.
LOAD_MODES = {"auto": ll.LLAMA_LOAD_MODE_AUTO, "on": ll.LLAMA_LOAD_MODE_MMAP, "off": ll.LLAMA_LOAD_MODE_NONE}


@dataclass(frozen=True)
class ContextConfig:
    n_ctx: int
    n_seq: int
    n_batch: int
    threads: int
    embedding: bool = False
    flash_attn: str = "auto"
    kv_cache_type: str = "f16"
    kv_unified: bool = False
    threadpool: bool = True
    poll: int = 50  # ggml threadpool busy-wait level 0-100 (llama-server's --poll)


def model_params(mmap: str = "auto", *, extra_bufts: bool = True, gpu: GpuParams | None = None) -> Any:
    """The `llama_model_params` of a runner (CPU only; `mmap` is a key of LOAD_MODES).

    `extra_bufts=False` keeps the weights in plain CPU buffers: no repacking for the AMX or
    AVX-512 kernels (llama-server's `--no-repack`), for CPUs that advertise an instruction set
    the system cannot run (seen: AMX in a VM, SIGILL on the first decode).
    """
    if mmap not in LOAD_MODES:
        raise CorralError(f"invalid mmap mode {mmap!r}")
    params = set_fields(
        ll.llama_model_default_params(), n_gpu_layers=0, load_mode=LOAD_MODES[mmap], use_extra_bufts=extra_bufts
    )
    return (gpu or GpuParams()).apply(params)  # no GpuParams: no device at all (CPU only)


def context_params(cfg: ContextConfig, *, pooling: int) -> Any:
    """The `llama_context_params` for `cfg` (every field checked against the bindings)."""
    return set_fields(
        ll.llama_context_default_params(),
        n_ctx=cfg.n_ctx,
        n_batch=cfg.n_batch,
        n_ubatch=cfg.n_batch if cfg.embedding else min(cfg.n_batch, 512),
        n_seq_max=cfg.n_seq,
        n_threads=cfg.threads,
        n_threads_batch=cfg.threads,
        kv_unified=cfg.kv_unified,
        embeddings=cfg.embedding,
        pooling_type=pooling,
        flash_attn_type=FLASH.get(cfg.flash_attn, -1),
        type_k=KV_TYPES.get(cfg.kv_cache_type, ll.GGML_TYPE_F16),
        type_v=KV_TYPES.get(cfg.kv_cache_type, ll.GGML_TYPE_F16),
        no_perf=True,
    )


class Batch:
    """One preallocated llama_batch whose arrays are numpy buffers we own (1 seq id per token)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        ptr_t = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (ptr_t * capacity)(*[ctypes.cast(base + 4 * i, ptr_t) for i in range(capacity)])
        self.struct = new(
            ll.llama_batch,
            n_tokens=0,
            token=self.token.ctypes.data_as(ptr_t),
            embd=ctypes.POINTER(ctypes.c_float)(),
            pos=self.pos.ctypes.data_as(ptr_t),
            n_seq_id=self.n_seq_id.ctypes.data_as(ptr_t),
            seq_id=ctypes.cast(self._seq_ptrs, ctypes.POINTER(ptr_t)),
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add_one(self, token: int, pos: int, seq: int) -> int:
        """Append one token that wants logits (the generation fast path)."""
        n = self.n
        self.token[n] = token
        self.pos[n] = pos
        self.seq[n] = seq
        self.logits[n] = 1
        self.n = n + 1
        return n

    def add(self, tokens: list[int], pos0: int, seq: int, want_last: bool) -> int:
        """Append tokens of one sequence; returns the batch index of the last one."""
        n, k = self.n, len(tokens)
        self.token[n : n + k] = tokens
        self.pos[n : n + k] = np.arange(pos0, pos0 + k, dtype=np.int32)
        self.seq[n : n + k] = seq
        self.logits[n : n + k] = 0
        if want_last:
            self.logits[n + k - 1] = 1
        self.n = n + k
        return n + k - 1


class LlamaModel:
    """The model, vocab and main context of one runner process."""

    def __init__(
        self,
        path: str,
        cfg: ContextConfig,
        *,
        mmap: str = "auto",
        lora: list[str] | None = None,
        extra_bufts: bool = True,
        gpu: GpuParams | None = None,
        rpc: RpcOffload | None = None,
    ):
        ll.llama_backend_init()
        params = model_params(mmap, extra_bufts=extra_bufts, gpu=gpu)
        if rpc is not None:
            rpc.apply(params)  # layers go to the RPC workers' devices, the rest stays on this CPU
        model = ll.llama_model_load_from_file(path.encode(), params)
        if not model:
            raise CorralError(f"unable to load model: {path}")
        self.model = model
        self.vocab = ll.llama_model_get_vocab(model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(ll.llama_model_n_embd(model))
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(model))
        self.add_bos = bool(ll.llama_vocab_get_add_bos(self.vocab))
        self.cfg = cfg
        self.ctx = self._new_context(cfg, pooling=-1)
        if cfg.embedding and ll.llama_pooling_type(self.ctx) == ll.LLAMA_POOLING_TYPE_NONE:
            ll.llama_free(self.ctx)
            self.ctx = self._new_context(cfg, pooling=ll.LLAMA_POOLING_TYPE_MEAN)
        self._loras: list[Any] = []
        if lora:
            self._apply_loras(lora)
        self.threadpool = Threadpool(cfg.threads or os.cpu_count() or 1, cfg.poll) if cfg.threadpool else None
        if self.threadpool is not None:
            self.threadpool.attach(self.ctx)
        self.mem = ll.llama_get_memory(self.ctx)
        self.batch = Batch(cfg.n_batch)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._eog_all: list[int] | None = None
        self._embed_ctx: Any = None
        self._embed_cfg: ContextConfig | None = None

    def _new_context(self, cfg: ContextConfig, *, pooling: int) -> Any:
        ctx = ll.llama_init_from_model(self.model, context_params(cfg, pooling=pooling))
        if not ctx:
            raise CorralError("unable to create llama context (out of memory?)")
        return ctx

    def _apply_loras(self, paths: list[str]) -> None:
        for p in paths:
            adapter = ll.llama_adapter_lora_init(self.model, p.encode())
            if not adapter:
                raise CorralError(f"unable to load LoRA adapter: {p}")
            self._loras.append(adapter)
        arr = (ll.llama_adapter_lora_p_ctypes * len(self._loras))(*self._loras)
        scales = (ctypes.c_float * len(self._loras))(*([1.0] * len(self._loras)))
        ll.llama_set_adapters_lora(self.ctx, arr, len(self._loras), scales)

    @property
    def loras(self) -> list[Any]:
        """The LoRA adapters loaded on the main context (in ADAPTER order)."""
        return self._loras

    # --- vocabulary -----------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        data = text.encode()
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, True)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        key = token if not special else -token - 1
        got = self._pieces.get(key)
        if got is None:
            buf = ctypes.create_string_buffer(64)
            n = ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            got = buf.raw[:n]
            self._pieces[key] = got
        return got

    def check_tokens(self, tokens: list[int]) -> None:
        """Refuse ids outside the vocabulary: llama.cpp aborts the whole process on them."""
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.n_vocab:
                raise BadRequestError(
                    f"invalid token id {t!r}: this model's vocabulary has ids 0 to {self.n_vocab - 1}"
                )

    def detokenize(self, tokens: list[int]) -> str:
        self.check_tokens(tokens)
        return b"".join(self.piece(t, special=True) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        got = self._eog.get(token)
        if got is None:
            got = self._eog[token] = bool(ll.llama_vocab_is_eog(self.vocab, token))
        return got

    # --- decoding ---------------------------------------------------------------------------
    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token id (scanned once, then cached)."""
        if self._eog_all is None:
            self._eog_all = [t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(self.vocab, t)]
        return self._eog_all

    def decode(self) -> int:
        return int(ll.llama_decode(self.ctx, self.batch.struct))

    def logits(self, i: int) -> npt.NDArray[np.float32]:
        ptr = ll.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # --- memory -----------------------------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(ll.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, n: int) -> None:
        """Give `dst` the first `n` positions of `src` (dst must be empty).

        Unified cache: the cells are shared (metadata only). Per-sequence streams: llama.cpp
        copies the whole stream buffer at the next decode, then the tail is dropped.
        """
        if self.cfg.kv_unified:
            ll.llama_memory_seq_cp(self.mem, src, dst, 0, n)
        else:
            ll.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
            ll.llama_memory_seq_rm(self.mem, dst, n, -1)

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        ll.llama_memory_seq_add(self.mem, seq, p0, p1, delta)

    def seq_state(self, seq: int) -> bytearray:
        """A copy of sequence `seq`'s KV state (llama.cpp's per-sequence state save)."""
        size = int(ll.llama_state_seq_get_size(self.ctx, seq))
        buf = bytearray(size)
        if size == 0:
            return buf
        got = int(ll.llama_state_seq_get_data(self.ctx, (ctypes.c_uint8 * size).from_buffer(buf), size, seq))
        return buf if got == size else buf[:got]

    def seq_restore(self, seq: int, data: bytearray) -> bool:
        """Load a state saved by `seq_state` into sequence `seq` (replacing what it held)."""
        if not data:
            return False
        arr = (ctypes.c_uint8 * len(data)).from_buffer(data)
        return int(ll.llama_state_seq_set_data(self.ctx, arr, len(data), seq)) > 0

    def can_shift(self) -> bool:
        return bool(ll.llama_memory_can_shift(self.mem))

    def warmup(self) -> None:
        """One tiny decode before the runner says it is ready, as llama-server does: the first real
        request does not pay for lazy initialisation, and a CPU kernel that cannot run here
        (SIGILL) kills the runner during load, where the engine can retry without repacking."""
        b = Batch(2)
        b.add([0, 0], 0, 0, want_last=True)
        b.struct.n_tokens = b.n
        ll.llama_decode(self.ctx, b.struct)
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)

    # --- embeddings -------------------------------------------------------------------------
    def embed_one(self, tokens: list[int]) -> list[float]:
        """Pooled embedding of one token list on the embedding context (created lazily)."""
        ctx = self._embedding_context(len(tokens))
        return [float(x) for x in decode_pooled(ctx, tokens, self.n_embd, "pooled embedding")]

    def _embedding_context(self, n_tokens: int) -> Any:
        if self.cfg.embedding:
            return self.ctx
        if self._embed_ctx is None:
            size = max(self.cfg.n_ctx // max(self.cfg.n_seq, 1), 64)
            self._embed_cfg = ContextConfig(
                n_ctx=size,
                n_seq=1,
                n_batch=size,
                threads=self.cfg.threads,
                embedding=True,
                flash_attn=self.cfg.flash_attn,
            )
            self._embed_ctx = self._new_context(self._embed_cfg, pooling=ll.LLAMA_POOLING_TYPE_MEAN)
        return self._embed_ctx

    def close(self) -> None:
        if self.threadpool is not None:
            self.threadpool.close()
        if self._embed_ctx is not None:
            ll.llama_free(self._embed_ctx)
            self._embed_ctx = None
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)


def decode_pooled(ctx: Any, tokens: list[int], n_out: int, what: str) -> Any:
    """Decode `tokens` alone on a pooling context (its memory cleared first) and return the
    pooled output of sequence 0 (`n_out` floats: an embedding, or a rank head's scores)."""
    ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
    b = Batch(len(tokens))
    b.add(tokens, 0, 0, want_last=True)
    b.logits[: b.n] = 1
    b.struct.n_tokens = b.n
    rc = ll.llama_decode(ctx, b.struct)
    if rc != 0:
        raise CorralError(f"{what} decode failed ({rc})")
    ptr = ll.llama_get_embeddings_seq(ctx, 0)
    if not ptr:
        raise CorralError(f"the model produced no {what}")
    return np.ctypeslib.as_array(ptr, shape=(n_out,))

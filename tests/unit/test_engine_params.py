"""llama.cpp load/context parameters, checked struct writes, the threadpool's libraries, and the
batch loop's stop (bindings loaded, no model)."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any, cast

import llama_cpp as ll
import pytest

from corral.engine.base import GenerateParams, LoadSpec
from corral.engine.llamacpp import backend
from corral.engine.llamacpp import protocol as proto
from corral.engine.llamacpp.batch import UNLOADED, BatchLoop
from corral.engine.llamacpp.cstruct import c_fields, new, set_fields
from corral.engine.llamacpp.loopio import Event, Generate, Stop
from corral.engine.llamacpp.model import ContextConfig, context_params, model_params
from corral.engine.llamacpp.proc import LlamaCppEngine, runner_argv
from corral.engine.llamacpp.runner import RunnerServer, event_dict
from corral.engine.llamacpp.threadpool import Threadpool, loaded_library
from corral.engine.llamacpp.tuning import RunnerTuning, flash_attn_for
from corral.errors import CorralError, PayloadTooLargeError
from corral.fit import FitRequest
from corral.schemas.options import LoadOptions, SampleOptions


def test_unknown_struct_field_raises_and_sets_nothing() -> None:
    params = ll.llama_model_default_params()
    with pytest.raises(CorralError, match=r"llama_model_params has no field 'use_mmap'"):
        set_fields(params, n_gpu_layers=7, use_mmap=False)
    assert params.n_gpu_layers != 7
    assert "use_mmap" not in vars(params)  # plain ctypes would have accepted it silently
    with pytest.raises(CorralError, match="'tokn'"):
        new(ll.llama_logit_bias, tokn=1, bias=0.0)


def test_known_fields_are_set() -> None:
    bias = new(ll.llama_logit_bias, token=5, bias=-1.5)
    assert (bias.token, bias.bias) == (5, -1.5)
    assert {"token", "bias"} == c_fields(ll.llama_logit_bias)


@pytest.mark.parametrize(
    ("mode", "load_mode"),
    [("auto", ll.LLAMA_LOAD_MODE_AUTO), ("on", ll.LLAMA_LOAD_MODE_MMAP), ("off", ll.LLAMA_LOAD_MODE_NONE)],
)
def test_mmap_modes_set_load_mode(mode: str, load_mode: int) -> None:
    p = model_params(mode)
    assert p.load_mode == load_mode and p.n_gpu_layers == 0
    assert not vars(p)  # every value went into a C field


def test_bad_mmap_mode() -> None:
    with pytest.raises(CorralError, match="invalid mmap mode"):
        model_params("sometimes")


def test_context_params_reach_c_fields() -> None:
    cfg = ContextConfig(n_ctx=2048, n_seq=4, n_batch=1024, threads=3, flash_attn="on", kv_cache_type="q8_0",
                        kv_unified=True)
    cp = context_params(cfg, pooling=ll.LLAMA_POOLING_TYPE_MEAN)
    assert not vars(cp)
    assert (cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max) == (2048, 1024, 512, 4)
    assert (cp.n_threads, cp.n_threads_batch, cp.flash_attn_type) == (3, 3, 1)
    assert cp.type_k == cp.type_v == ll.GGML_TYPE_Q8_0 and cp.kv_unified and cp.no_perf
    assert cp.pooling_type == ll.LLAMA_POOLING_TYPE_MEAN and not cp.embeddings


def _mapped(stem: str) -> set[str]:
    maps = Path("/proc/self/maps").read_text()
    return set(re.findall(rf"\S*/lib{re.escape(stem)}\.so[.\d]*$", maps, flags=re.M))


def test_threadpool_binds_the_libraries_llama_cpp_loaded() -> None:
    ll.llama_backend_init()
    before = _mapped("ggml-cpu")
    pool = Threadpool(2)
    try:
        assert pool.pool is not None
        assert _mapped("ggml-cpu") == before  # no second copy of ggml in the process
        assert _mapped("ggml-base") == {loaded_library("ggml-base")}
    finally:
        pool.close()
    with pytest.raises(OSError, match="not loaded"):
        loaded_library("no-such-library")


class _Model:
    """Just enough of LlamaModel for admission (`_prepare`)."""

    add_bos = False
    ctx = None  # no llama context: no LoRA adapters to scale
    loras: tuple[Any, ...] = ()

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return [1] * len(text.split())


def test_stop_fails_waiting_sequences_and_reports_stopped() -> None:
    loop = BatchLoop(cast(Any, _Model()), num_ctx=64, num_parallel=1)
    events: list[Event] = []
    stopped = threading.Event()
    loop.on_stopped = stopped.set
    params = GenerateParams(prompt="a b c", options=SampleOptions())
    loop.submit(Generate(1, params, events.append))
    loop.submit(Stop())
    loop.submit(Generate(2, params, events.append))  # after the stop: refused, never queued
    worker = threading.Thread(target=loop.run)
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and stopped.is_set()
    assert [event_dict(e) for e in events] == [proto.error_event(CorralError(UNLOADED))] * 2
    assert not loop.waiting and not loop.active


def test_an_over_long_request_line_is_read_to_its_end_and_refused() -> None:
    async def go() -> tuple[type[BaseException], bytes]:
        reader = asyncio.StreamReader(limit=1024)
        reader.feed_data(b'{"op":"tokenize","text":"' + b"x" * 5000 + b'"}\n')
        reader.feed_data(b"next")
        reader.feed_eof()
        server = RunnerServer(cast(Any, None), cast(Any, None), embedding=False, num_ctx=64, max_line=1024)
        try:
            await server._read_request(reader)
        except PayloadTooLargeError as exc:
            assert "limit 1024 bytes" in exc.message
            return type(exc), await reader.read()
        raise AssertionError("no error")

    kind, rest = asyncio.run(go())
    assert kind is PayloadTooLargeError and rest == b""


@pytest.mark.parametrize(("use_mmap", "flag"), [(None, []), (True, ["--mmap", "on"]), (False, ["--mmap", "off"])])
def test_runner_argv_passes_mmap_and_line_limit(use_mmap: bool | None, flag: list[str]) -> None:
    spec = LoadSpec(model_path=Path("/m.gguf"), options=LoadOptions(use_mmap=use_mmap))
    argv = runner_argv(spec, "/tmp/s", "python", max_line=12345)
    assert argv[argv.index("--max-line") + 1] == "12345"
    tail = argv[argv.index("--mmap") : argv.index("--mmap") + 2] if "--mmap" in argv else []
    assert tail == flag
    assert "--no-mmap" not in argv


@pytest.mark.parametrize(
    ("tuning", "flags"),
    [
        (RunnerTuning(), ["--flash-attn", "auto"]),
        (RunnerTuning(flash_attention=False, kv_cache_type="q8_0", kv_unified=True),
         ["--flash-attn", "off", "--kv-cache-type", "q8_0", "--kv-unified"]),
        (RunnerTuning(flash_attention=True), ["--flash-attn", "on"]),
    ],
)
def test_runner_tuning_is_the_engines_not_the_specs(tuning: RunnerTuning, flags: list[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = LoadSpec(model_path=Path("/m.gguf"))
    assert not {"--flash-attn", "--kv-cache-type", "--kv-unified"} & set(runner_argv(spec, "/tmp/s", "python"))
    assert tuning.argv() == flags
    seen: list[FitRequest] = []
    monkeypatch.setattr(backend, "model_layout", lambda path: None)
    monkeypatch.setattr(backend, "fit", lambda layout, devices, req: seen.append(req))
    LlamaCppEngine(log_dir=Path("/nonexistent"), tuning=tuning).place(spec)
    assert seen[0].kv_cache_type == (tuning.kv_cache_type or "f16")
    assert seen[0].flash_attn is (tuning.flash_attention is not False)


@pytest.mark.parametrize(
    ("requested", "cpu_only", "kv", "resolved"),
    [
        ("auto", True, "", "off"),  # CPU only: the plain attention path (2-3x faster past ~200 tokens)
        ("auto", True, "f16", "off"),
        ("auto", True, "q8_0", "auto"),  # a quantized V cache needs flash attention
        ("auto", False, "", "auto"),  # layers on a GPU or RPC workers: llama.cpp decides
        ("on", True, "", "on"),  # the operator's CORRAL_FLASH_ATTENTION stands
        ("off", False, "q8_0", "off"),
    ],
)
def test_flash_attention_auto_is_off_on_a_cpu_only_runner(requested: str, cpu_only: bool, kv: str,
                                                          resolved: str) -> None:
    assert flash_attn_for(requested, cpu_only=cpu_only, kv_cache_type=kv) == resolved

"""RPC workers without llama.cpp: settings, the probe, the layer split, which workers a runner gets."""

from __future__ import annotations

import asyncio
import importlib.metadata
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from corral.cli.run import rpc_lines, rpc_processor
from corral.cli.worker import check_bind, worker
from corral.config import Settings
from corral.configfile import ConfigError, load_settings
from corral.engine.base import LoadSpec
from corral.engine.llamacpp import rpc
from corral.engine.llamacpp.proc import LlamaCppEngine, RunnerCrashedError
from corral.engine.llamacpp.rpcpool import Choice, WorkerPool, in_use
from corral.engine.llamacpp.rpcserver import find_rpc_lib, rpc_lib_dirs
from corral.errors import CorralError, RunnerStoppedError
from corral.server.native.ps import rpc_offload
from tests.rpcfake import FakeWorker, closed_port

GiB = 1 << 30


# --- settings -----------------------------------------------------------------------------------
def test_workers_and_split_are_read_once_from_the_environment() -> None:
    s = Settings.from_env({"CORRAL_RPC_WORKERS": " 10.0.0.2:50052, gpubox ", "CORRAL_RPC_SPLIT": "1, 2,1"})
    assert s.rpc_workers == ("10.0.0.2:50052", "gpubox:50052")
    assert s.rpc_shares == (1.0, 2.0, 1.0)
    assert Settings.from_env({}).rpc_workers == ()
    assert Settings.from_env({}).rpc_shares == ()


def test_workers_and_split_from_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "corral.toml"
    conf.write_text('rpc_workers = ["10.0.0.2:50052", "10.0.0.3"]\nrpc_split = "0,1,1"\n')
    s = load_settings({}, conf)
    assert s.rpc_workers == ("10.0.0.2:50052", "10.0.0.3:50052") and s.rpc_shares == (0.0, 1.0, 1.0)
    conf.write_text('rpc_workers = ["10.0.0.2:50052"]\nrpc_split = "0,1,1"\n')
    with pytest.raises(ConfigError, match="3 shares for 1 RPC workers"):
        load_settings({}, conf)


@pytest.mark.parametrize("env, says", [
    ({"CORRAL_RPC_WORKERS": "[::1]:50052"}, "IPv6"),
    ({"CORRAL_RPC_WORKERS": "a:1,a:1"}, "listed twice"),
    ({"CORRAL_RPC_WORKERS": "a:0"}, "not a port number"),
    ({"CORRAL_RPC_WORKERS": "a:1", "CORRAL_RPC_SPLIT": "1"}, "1 shares for 1 RPC workers"),
    ({"CORRAL_RPC_WORKERS": "a:1", "CORRAL_RPC_SPLIT": "1,x"}, "must be numbers"),
    ({"CORRAL_RPC_WORKERS": "a:1", "CORRAL_RPC_SPLIT": "0,0"}, "not all zero"),
    ({"CORRAL_RPC_WORKERS": "a:1", "CORRAL_RPC_SPLIT": "1,-1"}, "not negative"),
])
def test_bad_worker_settings_stop_the_start_with_a_reason(env: dict[str, str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings.from_env(env)


# --- the probe ----------------------------------------------------------------------------------
def test_probe_reads_version_and_memory_of_every_device() -> None:
    with FakeWorker([(3 * GiB, 4 * GiB), (1 * GiB, 2 * GiB)]) as w:
        info = rpc.probe(w.endpoint)
    assert info.version == (7, 0, 0)
    assert info.memory == ((3 * GiB, 4 * GiB), (1 * GiB, 2 * GiB))
    assert info.free == 4 * GiB


def test_probe_refuses_another_protocol_version() -> None:
    with FakeWorker(version=(3, 0, 0)) as w, pytest.raises(rpc.WorkerUnavailable, match=r"protocol 3\.0\.0"):
        rpc.probe(w.endpoint)


def test_probe_of_a_busy_worker_times_out_instead_of_hanging() -> None:
    with FakeWorker(silent=True) as w, pytest.raises(rpc.WorkerUnavailable, match="busy"):
        rpc.probe(w.endpoint, timeout=0.3)


def test_probe_of_nothing_says_unreachable() -> None:
    with pytest.raises(rpc.WorkerUnavailable, match="unreachable"):
        rpc.probe(f"127.0.0.1:{closed_port()}", timeout=1.0)


def test_refusing_names_only_the_endpoints_nothing_listens_on() -> None:
    dead = f"127.0.0.1:{closed_port()}"
    with FakeWorker() as w:
        assert asyncio.run(rpc.refusing([w.endpoint, dead])) == [dead]


# --- the split ----------------------------------------------------------------------------------
def test_assign_layers_follows_llama_cpp_upper_bound_rule() -> None:
    # 30 repeating layers + the output layer, all offloaded, even split: il/31 < 0.5 -> first device
    assert rpc.assign_layers(30, 31, [1.0, 1.0]) == (16, 15)
    assert rpc.assign_layers(30, 10, [1.0, 1.0]) == (5, 5)
    assert rpc.assign_layers(30, 31, [0.0, 1.0]) == (0, 31)
    assert rpc.assign_layers(30, 0, [1.0]) == (0,)
    assert sum(rpc.assign_layers(29, 30, [3.0, 1.0, 2.0])) == 30


def dev(ep: str, free: int, name: str = "RPC0") -> rpc.Device:
    return rpc.Device(ep, name, free, free * 2)


def test_default_split_fills_the_workers_by_their_free_memory() -> None:
    layer = 100 << 20
    big, small = dev("a:1", 3 * GiB + rpc.RESERVE_BYTES), dev("b:1", 1 * GiB + rpc.RESERVE_BYTES)
    plan = rpc.plan_split(30, layer, [big, small])
    assert plan.n_gpu_layers == 31 and plan.local_layers == 0
    assert plan.layers[0] > plan.layers[1] and sum(plan.layers) == 31
    tight = rpc.plan_split(30, layer, [dev("a:1", 10 * layer + rpc.RESERVE_BYTES)])
    assert tight.n_gpu_layers == 10 and tight.local_layers == 21 and tight.layers == (10,)
    none = rpc.plan_split(30, layer, [dev("a:1", rpc.RESERVE_BYTES)])
    assert none.n_gpu_layers == 0 and none.local_layers == 31


def test_shares_put_this_machine_first_then_each_worker() -> None:
    devices = [dev("a:1", GiB), dev("b:1", GiB)]
    plan = rpc.plan_split(30, 1, devices, (1.0, 1.0, 1.0), ("a:1", "b:1"))
    assert plan.n_gpu_layers == round(31 * 2 / 3) and plan.local_layers == 31 - plan.n_gpu_layers
    assert rpc.plan_split(30, 1, devices, (0, 0, 1), ("a:1", "b:1")).layers == (0, 31)
    assert rpc.plan_split(30, 1, devices, (1, 0, 0), ("a:1", "b:1")).n_gpu_layers == 0
    with pytest.raises(CorralError, match="3 shares for 1 workers"):
        rpc.plan_split(30, 1, devices[:1], (1, 1, 1), ("a:1",))


def test_a_workers_share_is_divided_among_its_devices_by_free_memory() -> None:
    devices = [dev("a:1", 3 * GiB, "RPC0"), dev("a:1", 1 * GiB, "RPC1")]
    plan = rpc.plan_split(30, 1, devices, (0, 1), ("a:1",))
    assert plan.tensor_split == (0.75, 0.25)


def test_select_drops_zero_shares_and_dead_workers_with_their_share() -> None:
    conf = ("a:1", "b:1")
    assert rpc.select(["a:1", "b:1"], conf, ()) == (("a:1", "b:1"), ())
    assert rpc.select(["a:1", "b:1"], conf, (1, 0, 2)) == (("b:1",), (1, 2))
    assert rpc.select(["a:1"], conf, (1, 1, 2)) == (("a:1",), (1, 1))
    assert rpc.select(["a:1"], conf, (1, 0, 2)) == ((), ())


# --- which workers a runner gets ----------------------------------------------------------------
class Held:
    def __init__(self, workers: tuple[str, ...], alive: bool = True) -> None:
        self.rpc_workers, self.alive = workers, alive


def test_a_new_runner_gets_the_workers_that_answer_and_no_live_runner_holds() -> None:
    dead = f"127.0.0.1:{closed_port()}"
    with FakeWorker() as a, FakeWorker() as b:
        pool = WorkerPool([a.endpoint, b.endpoint, dead], (1, 1, 1, 1), probe_timeout=1.0)
        choice = asyncio.run(pool.choose(in_use([Held((a.endpoint,)), Held((b.endpoint,), alive=False)])))
    assert choice == Choice((b.endpoint,), (1, 1))
    assert choice.argv() == ["--rpc", b.endpoint, "--rpc-split", "1,1"]
    assert pool.free == {b.endpoint: 8 * GiB}  # the dead one is forgotten, the held one not probed


def test_offloadable_is_what_the_workers_last_reported_room_for() -> None:
    pool = WorkerPool(["a:1", "b:1"])
    pool.free = {"a:1": 2 * GiB + rpc.RESERVE_BYTES}
    assert pool.offloadable(5 * GiB) == 2 * GiB
    assert pool.offloadable(1 * GiB) == 1 * GiB
    shared = WorkerPool(["a:1", "b:1"], (2, 1, 1))
    shared.free = {"a:1": GiB, "b:1": GiB}
    assert shared.offloadable(4 * GiB) == 2 * GiB


def test_a_runner_lost_with_a_dead_worker_gets_an_error_naming_it() -> None:
    dead = f"127.0.0.1:{closed_port()}"
    with FakeWorker() as alive:
        pool = WorkerPool([alive.endpoint, dead])
        err = asyncio.run(pool.lost_error((alive.endpoint, dead)))
        assert asyncio.run(pool.lost_error((alive.endpoint,), settle=0.3)) is None
    assert isinstance(err, RunnerStoppedError)
    assert dead in err.message and alive.endpoint not in err.message
    assert "reloads the model without it" in err.message


def test_a_worker_whose_port_closes_just_after_its_runner_died_is_still_named() -> None:
    """A killed worker's port may accept for a moment after the runner saw the connection drop."""
    with FakeWorker() as worker:
        pool = WorkerPool([worker.endpoint])
        closer = threading.Timer(0.5, worker.close)
        closer.start()
        try:
            err = asyncio.run(pool.lost_error((worker.endpoint,)))
        finally:
            closer.cancel()
    assert isinstance(err, RunnerStoppedError) and worker.endpoint in err.message


def fake_build(root: Path) -> Path:
    lib = root / "lib"
    lib.mkdir(parents=True)
    (root / "variant.json").write_text("{}")
    for name in ("libggml.so", "libggml-rpc.so", "libllama.so"):
        (lib / name).write_bytes(b"")
    return lib


def test_runner_env_keeps_an_rpc_build_and_replaces_one_without(tmp_path: Path) -> None:
    rpc_lib = fake_build(tmp_path / "cpu-rpc-0.3.36")
    plain = tmp_path / "plain"
    plain.mkdir()
    pool = WorkerPool(["a:1"], lib_dir=rpc_lib)
    assert pool.runner_env({"LLAMA_CPP_LIB_PATH": str(plain)})["LLAMA_CPP_LIB_PATH"] == str(rpc_lib)
    assert pool.runner_env({})["MTMD_CPP_LIB"] == str(rpc_lib)
    other = fake_build(tmp_path / "vulkan-0.3.36")
    assert pool.runner_env({"LLAMA_CPP_LIB_PATH": str(other)})["LLAMA_CPP_LIB_PATH"] == str(other)


def test_find_rpc_lib_prefers_cpu_rpc_and_says_how_to_build_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    monkeypatch.setattr("corral.engine.llamacpp.rpcserver._package_lib_dirs", lambda: [])
    with pytest.raises(CorralError, match=r"build_backend\.sh cpu-rpc"):
        find_rpc_lib(backends=tmp_path)
    version = importlib.metadata.version("llama-cpp-python")
    fake_build(tmp_path / f"cpu-rpc-{version}.tmp.123")  # a copy in progress
    (tmp_path / f"cpu-rpc-{version}.tmp.123" / "variant.json").unlink()
    fake_build(tmp_path / "cpu-rpc-0.0.1")  # built for other bindings
    fake_build(tmp_path / f"vulkan-{version}")
    assert find_rpc_lib(backends=tmp_path) == tmp_path / f"vulkan-{version}" / "lib"
    fake_build(tmp_path / f"cpu-rpc-{version}")
    assert find_rpc_lib(backends=tmp_path) == tmp_path / f"cpu-rpc-{version}" / "lib"
    assert rpc_lib_dirs([tmp_path / "nothing"]) == []


# --- what ps shows ------------------------------------------------------------------------------
REPORT = {"layers": 31, "local_layers": 11, "workers": [
    {"endpoint": "10.0.0.2:50052", "device": "RPC0", "free": 8 * GiB, "total": 16 * GiB, "layers": 20}]}


def test_ps_shows_the_split_and_each_worker() -> None:
    class Runner:
        def __init__(self) -> None:
            self.info = {"rpc": REPORT}

    assert rpc_offload(Runner()) == REPORT
    assert rpc_offload(object()) is None
    model = {"name": "m:latest", "rpc": REPORT}
    assert rpc_processor(model) == "35%/65% CPU/RPC"
    assert rpc_processor({"name": "x"}) is None
    assert rpc_lines([model]) == ["m:latest: 11/31 layers local, 20 on 10.0.0.2:50052 (8.6 GB free)"]


# --- the worker command -------------------------------------------------------------------------
def test_worker_refuses_a_public_bind_without_the_flag_and_explains() -> None:
    result = CliRunner().invoke(worker, ["--host", "0.0.0.0", "--port", str(closed_port())])
    assert result.exit_code == 1
    assert "refusing to listen on 0.0.0.0" in result.output
    assert "NO authentication" in result.output and "--allow-unauthenticated" in result.output


def test_worker_takes_only_ipv4_addresses() -> None:
    result = CliRunner().invoke(worker, ["--host", "::1"])
    assert result.exit_code == 2 and "IPv4" in result.output


def test_allowed_public_bind_warns_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    check_bind("127.0.0.1", 50052, False)
    assert capsys.readouterr().err == ""
    check_bind("192.168.1.5", 50052, True)
    err = capsys.readouterr().err
    assert "WITHOUT AUTHENTICATION" in err and "aborts the model runner" in err


# --- the engine -----------------------------------------------------------------------------------
class _Spawns(LlamaCppEngine):
    """An engine whose runner start is scripted: each entry crashes (a signal) or succeeds (None),
    after `during_load` ran (a worker dying while the runner loads)."""

    def __init__(self, tmp: Path, pool: WorkerPool, script: list[int | None], during_load: Any = None) -> None:
        super().__init__(log_dir=tmp, rpc=pool)
        self.script = script
        self.during_load = during_load
        self.choices: list[Choice] = []

    async def _spawn_once(self, spec: LoadSpec, placement: Any = None) -> Any:
        assert self.rpc is not None
        self._rpc_choice = await self.rpc.choose()
        self.choices.append(self._rpc_choice)
        if self.during_load is not None:
            self.during_load()
            self.during_load = None
        sig = self.script.pop(0)
        if sig is not None:
            raise RunnerCrashedError("llama runner process has terminated", signal=sig)
        return "runner"


def test_a_load_that_lost_a_worker_is_retried_without_it(tmp_path: Path) -> None:
    with FakeWorker() as a, FakeWorker() as b:
        pool = WorkerPool([a.endpoint, b.endpoint], probe_timeout=1.0)
        engine = _Spawns(tmp_path, pool, [signal.SIGABRT, None], during_load=b.close)
        assert asyncio.run(engine._spawn(LoadSpec(model_path=tmp_path / "m.gguf"))) == "runner"
    assert [c.workers for c in engine.choices] == [(a.endpoint, b.endpoint), (a.endpoint,)]


def test_a_load_crash_with_every_worker_alive_is_not_retried(tmp_path: Path) -> None:
    with FakeWorker() as a:
        engine = _Spawns(tmp_path, WorkerPool([a.endpoint], probe_timeout=1.0), [signal.SIGSEGV, None])
        with pytest.raises(RunnerCrashedError):
            asyncio.run(engine._spawn(LoadSpec(model_path=tmp_path / "m.gguf")))
    assert len(engine.choices) == 1


def test_the_memory_estimate_leaves_out_what_the_workers_take(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(bytes(3 << 20))
    spec = LoadSpec(model_path=model)
    local = LlamaCppEngine(log_dir=tmp_path).estimate(spec)
    pool = WorkerPool(["a:1"])
    pool.free = {"a:1": rpc.RESERVE_BYTES + (2 << 20)}
    assert LlamaCppEngine(log_dir=tmp_path, rpc=pool).estimate(spec) == local - (2 << 20)


def test_protocol_version_matches_the_installed_ggml_rpc_header() -> None:
    import re
    import sysconfig

    header = Path(sysconfig.get_paths()["purelib"]) / "include" / "ggml-rpc.h"
    if not header.is_file():
        pytest.skip(f"no {header} (llama-cpp-python installs it with the wheel)")
    text = header.read_text()
    major = re.search(r"#define RPC_PROTO_MAJOR_VERSION\s+(\d+)", text)
    minor = re.search(r"#define RPC_PROTO_MINOR_VERSION\s+(\d+)", text)
    assert major and minor
    assert (int(major.group(1)), int(minor.group(1))) == (rpc.RPC_PROTO_MAJOR, rpc.RPC_PROTO_MINOR)

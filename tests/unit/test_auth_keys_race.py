"""keys.json under concurrent writers in separate processes (CLI and server alike): no lost updates."""

from __future__ import annotations

import multiprocessing
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from click.testing import CliRunner

from corral.auth.keys import KeyStore
from corral.cli.main import cli

CTX = multiprocessing.get_context("fork")


def _cli_create(home: str, barrier: Barrier, name: str, out: Queue[tuple[int, str]]) -> None:
    barrier.wait(timeout=60)
    result = CliRunner().invoke(cli, ["keys", "create", "--scope", "read", "--name", name], env={"CORRAL_HOME": home})
    out.put((result.exit_code, result.output))


def test_ten_parallel_cli_creates_all_work(tmp_path: Path) -> None:
    # ten processes run the `corral keys create` verb at the same moment (forked, so they start in
    # milliseconds instead of importing the CLI ten times over)
    barrier = CTX.Barrier(10)
    out: Queue[tuple[int, str]] = CTX.Queue()
    procs = [CTX.Process(target=_cli_create, args=(str(tmp_path), barrier, f"k{i}", out)) for i in range(10)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(code == 0 for code, _ in results), results
    keys = [output.strip().splitlines()[-1] for _, output in results]
    store = KeyStore(tmp_path / "keys.json")
    assert all(store.verify(k) is not None for k in keys)
    assert sorted(r.name for r in store.records()) == sorted(f"k{i}" for i in range(10))


def _create(path: str, barrier: Barrier, name: str, out: Queue[str]) -> None:
    barrier.wait(timeout=60)
    _, plain = KeyStore(Path(path)).create("infer", name=name)
    out.put(plain)


def _revoke(path: str, barrier: Barrier, key_id: str) -> None:
    barrier.wait(timeout=60)
    KeyStore(Path(path)).revoke(key_id)


def test_create_and_revoke_race_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    for round_ in range(5):
        admin, admin_key = KeyStore(path).create("admin", name=f"admin{round_}")
        barrier = CTX.Barrier(5)
        out: Queue[str] = CTX.Queue()
        procs = [CTX.Process(target=_revoke, args=(str(path), barrier, admin.id))]
        procs += [CTX.Process(target=_create, args=(str(path), barrier, f"r{round_}w{i}", out)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        created = [out.get(timeout=10) for _ in range(4)]
        fresh = KeyStore(path)
        assert fresh.verify(admin_key) is None, f"round {round_}: revoked admin key is valid again"
        assert all(fresh.verify(k) is not None for k in created), f"round {round_}: a created key was lost"
    assert len(KeyStore(path).records()) == 20

"""keys.json under concurrent writers in separate processes (CLI and server alike): no lost updates."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from corral.auth.keys import KeyStore

CTX = multiprocessing.get_context("fork")


def test_ten_parallel_cli_creates_all_work(tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_HOME": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "corral", "keys", "create", "--scope", "read", "--name", f"k{i}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(10)
    ]
    keys = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        keys.append(out.strip().splitlines()[-1])
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

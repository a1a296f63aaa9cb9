"""Schemathesis against a live server's /openapi.json: a bounded run with zero 5xx responses.

Runs the `st` CLI (schemathesis==4.32.5) as a subprocess against its own server (smollm2:135m
pulled, so show/copy/generate reach past "not found"; fuzzed deletes cannot disturb other tests),
deterministic generation, a few examples per operation. Pull, push and
the /v2 registry are excluded: they would reach for the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import running_server

pytestmark = pytest.mark.integration


def st_binary() -> str | None:
    local = Path(sys.executable).with_name("st")
    return str(local) if local.exists() else shutil.which("st")


def test_schemathesis_finds_no_server_errors(tmp_path: Path) -> None:
    st = st_binary()
    if st is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis==4.32.5)")
    with running_server(tmp_path / "home", {"CORRAL_NUM_PARALLEL": "1"}) as server:
        pulled = httpx.post(server.url + "/api/pull", json={"model": "smollm2:135m", "stream": False},
                            timeout=300, trust_env=False)
        assert pulled.status_code == 200, pulled.text
        run_schemathesis(st, server.url, tmp_path)


def run_schemathesis(st: str, url: str, workdir: Path) -> None:
    done = subprocess.run(
        [st, "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "8",
         "--exclude-path-regex", r"^/api/(pull|push)|^/v2/", "--generation-deterministic",
         "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600, check=False, cwd=workdir,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout and "Server error" not in done.stdout

"""The operator's runner settings travel from the environment to every runner through the engine
(cli/serve.py builds `RunnerTuning` into `LlamaCppEngine`), not through each load spec (integration)."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import running_server

pytestmark = pytest.mark.integration


def runner_cmdlines(server_pid: int) -> list[list[str]]:
    children = psutil.Process(server_pid).children(recursive=True)
    return [c.cmdline() for c in children if "corral.engine.llamacpp.runner" in c.cmdline()]


def test_kv_and_flash_settings_reach_the_runner(tmp_path: Path) -> None:
    env = {"CORRAL_KV_CACHE_TYPE": "q8_0", "CORRAL_FLASH_ATTENTION": "true", "CORRAL_KV_UNIFIED": "1",
           "CORRAL_CONTEXT_LENGTH": "512", "CORRAL_NUM_PARALLEL": "1"}
    with running_server(tmp_path / "home", env) as srv, \
            httpx.Client(base_url=srv.url, timeout=300, trust_env=False) as c:
        assert c.post("/api/pull", json={"model": "smollm2:135m", "stream": False}).status_code == 200
        r = c.post("/api/generate", json={"model": "smollm2:135m", "prompt": "Say hi.", "stream": False,
                                          "options": {"num_predict": 4, "temperature": 0}})
        assert r.status_code == 200 and r.json()["eval_count"] > 0, r.text
        assert srv.proc is not None
        [argv] = runner_cmdlines(srv.proc.pid)
    assert argv[argv.index("--kv-cache-type") + 1] == "q8_0"
    assert argv[argv.index("--flash-attn") + 1] == "on"  # a quantized V cache needs it
    assert "--kv-unified" in argv

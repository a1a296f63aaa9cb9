"""Modelfile DRAFT on a real server: SmolLM2 drafting for itself (the mechanics of draft models,
cheap enough for CI; the Qwen2.5-Coder 0.5B/1.5B pair is measured in bench/RESULTS.md).

`corral create` with `DRAFT <gguf file>` uploads it, the runner loads it beside the model
(`--draft`), and the answers are the plain model's, token for token, greedy and seeded. That holds
with flash attention on (a CPU-only runner's default is off, whose attention products round
differently for several query rows than for one: README, "Speculative decoding"), so this test runs
its own server with CORRAL_FLASH_ATTENTION=true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import ServerProcess, chat, running_server, smollm2_path

pytestmark = pytest.mark.integration
PROMPTS = [chat("Write a short poem about the sea."), chat("List three fruits and their colours.")]


def generate(http: httpx.Client, model: str, prompt: str, **options: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "raw": True, "stream": False,
            "options": {"num_predict": 40, **options}}
    r = http.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def runner_argvs(server: ServerProcess) -> list[list[str]]:
    assert server.proc is not None
    return [p.cmdline() for p in psutil.Process(server.proc.pid).children(recursive=True)
            if "corral.engine.llamacpp.runner" in " ".join(p.cmdline())]


def test_a_model_drafting_for_itself_answers_as_the_plain_model(tmp_path: Path) -> None:
    with running_server(tmp_path / "home", {"CORRAL_FLASH_ATTENTION": "true"}) as server, \
            httpx.Client(base_url=server.url, timeout=300, trust_env=False) as http:
        assert http.post("/api/pull", json={"model": "smollm2:135m", "stream": False}).status_code == 200
        drafting_matches_plain(server, http, tmp_path)


def drafting_matches_plain(server: ServerProcess, http: httpx.Client, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM smollm2:135m\nDRAFT {smollm2_path()}\n")
    done = server.cli("create", "smol-drafted", "-f", str(modelfile), timeout=300)
    assert done.returncode == 0, done.stderr
    show = http.post("/api/show", json={"model": "smol-drafted"}).json()
    assert "\nDRAFT " in show["modelfile"]
    for opts in ({"temperature": 0}, {"temperature": 0.8, "seed": 11, "top_k": 30}):
        for prompt in PROMPTS:
            want = generate(http, "smollm2:135m", prompt, **opts)
            got = generate(http, "smol-drafted", prompt, **opts)
            assert got["response"] == want["response"]
            assert got["eval_count"] == want["eval_count"]
    drafted = [argv for argv in runner_argvs(server) if "--draft" in argv]
    assert drafted and drafted[0][drafted[0].index("--draft") + 1].endswith(
        show["modelfile"].split("\nDRAFT ")[1].split("\n")[0].split("/")[-1]
    )


def test_a_draft_that_cannot_load_is_a_clear_error(
    server: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    from tests.ggufs import write_gguf

    other = write_gguf(tmp_path / "other.gguf", n=8)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM smollm2:135m\nDRAFT {other}\n")
    done = server.cli("create", "smol-baddraft", "-f", str(modelfile), timeout=300)
    assert done.returncode == 0, done.stderr
    r = http.post("/api/generate", json={"model": "smol-baddraft", "prompt": "hi", "stream": False})
    assert r.status_code >= 400
    assert "draft model" in r.json()["error"]

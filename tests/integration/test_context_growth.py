"""Tools that do not fit a context nobody chose: the runner is reloaded with a context that holds
them (as Open WebUI needs: it attaches ~36 tools to every chat), on a real server and model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, running_server

pytestmark = pytest.mark.integration

TOOLS = [{"type": "function", "function": {
    "name": f"tool_{i}", "description": "Looks something up in the team's knowledge base. " * 6,
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}} for i in range(16)]
ASK = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def small_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home: Path = tmp_path_factory.mktemp("corral-ctx")
    env = {"CORRAL_NUM_PARALLEL": "1", "CORRAL_CONTEXT_LENGTH": "1024"}
    with running_server(home, env) as srv:
        with httpx.Client(base_url=srv.url, timeout=300, trust_env=False) as c:
            assert c.post("/api/pull", json={"model": "smollm2:135m", "stream": False}).status_code == 200
        yield srv


def _context_length(c: httpx.Client) -> int:
    models = c.get("/api/ps").json()["models"]
    assert len(models) == 1
    return int(models[0]["context_length"])


def test_tools_beyond_the_default_context_grow_it(small_ctx: ServerProcess) -> None:
    with httpx.Client(base_url=small_ctx.url, timeout=300, trust_env=False) as c:
        r = c.post("/api/chat", json={"model": "smollm2:135m", "messages": ASK, "tools": TOOLS, "stream": False,
                                      "options": {"num_predict": 4, "temperature": 0}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["prompt_eval_count"] > 1024  # the whole tool list reached the model
        assert _context_length(c) == 4096
        r = c.post("/api/chat", json={"model": "smollm2:135m", "messages": ASK, "stream": False,
                                      "options": {"num_predict": 2}})
        assert r.status_code == 200, r.text
        assert _context_length(c) == 4096  # a plain request is served by the grown runner, no reload


def test_a_chosen_context_is_not_grown(small_ctx: ServerProcess) -> None:
    with httpx.Client(base_url=small_ctx.url, timeout=300, trust_env=False) as c:
        r = c.post("/api/chat", json={"model": "smollm2:135m", "messages": ASK, "tools": TOOLS, "stream": False,
                                      "options": {"num_ctx": 1024, "num_predict": 4}})
        assert r.status_code == 400, r.text
        assert "num_ctx=1024" in r.json()["error"] and "with 16 tools" in r.json()["error"]

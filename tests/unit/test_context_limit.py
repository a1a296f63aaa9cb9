"""A prompt with tools is never cut in the middle of its tool list. When nobody chose num_ctx the
context grows to hold it (up to the model's trained context, 2048 for the test GGUF); beyond that,
or when num_ctx was chosen, it is a 400 naming the sizes, on every API that coding agents use
(/api/chat, /v1/chat/completions, /v1/messages streamed or not, /v1/responses). Without tools the
old behaviour stays (oldest turns dropped, the runner truncates what is left)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.config import Settings
from corral.engine.fake import ScriptedEngine
from corral.scheduler import Scheduler
from corral.server.app import create_app
from corral.store.store import Store
from tests.appenv import make_model


# The scripted runner counts whitespace-separated words as tokens.
def make_tools(words: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": f"tool_{i}", "description": "does things " * words,
                                              "parameters": {"type": "object"}}} for i in range(6)]


TOOLS = make_tools(10)  # ~130 words: more than num_ctx=64, well inside the trained 2048
HUGE_TOOLS = make_tools(200)  # ~2400 words: more than the model was trained for
TEMPLATE = ("{{ range .Tools }}{{ .Function.Name }}: {{ .Function.Description }} {{ end }}"
            "{{ range .Messages }}{{ .Role }}: {{ .Content }} {{ end }}")


class App:
    def __init__(self, tmp_path: Path) -> None:
        settings = Settings(home=tmp_path, context_length=64)
        self.engine = ScriptedEngine()
        store = Store(tmp_path / "models")
        self.app = create_app(settings, store, scheduler=Scheduler(self.engine, settings), prune_on_start=False)
        make_model(store, tmp_path, "agent", template=TEMPLATE)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        async def main() -> Any:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434") as c:
                return await c.post(path, json=body)

        return asyncio.run(main())


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path)


def anthropic_tools() -> list[dict[str, Any]]:
    return [{"name": t["function"]["name"], "description": t["function"]["description"],
             "input_schema": {"type": "object"}} for t in HUGE_TOOLS]


def responses_tools() -> list[dict[str, Any]]:
    return [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
             "parameters": {"type": "object"}} for t in HUGE_TOOLS]


CASES = {
    "native": ("/api/chat", {"model": "agent", "messages": [{"role": "user", "content": "hi"}],
                             "tools": HUGE_TOOLS}),
    "openai": ("/v1/chat/completions", {"model": "agent", "messages": [{"role": "user", "content": "hi"}],
                                        "tools": HUGE_TOOLS}),
    "openai_stream": ("/v1/chat/completions", {"model": "agent", "stream": True, "tools": HUGE_TOOLS,
                                               "messages": [{"role": "user", "content": "hi"}]}),
    "anthropic": ("/v1/messages", {"model": "agent", "max_tokens": 10, "tools": anthropic_tools(),
                                   "messages": [{"role": "user", "content": "hi"}]}),
    "anthropic_stream": ("/v1/messages", {"model": "agent", "max_tokens": 10, "stream": True,
                                          "tools": anthropic_tools(), "messages": [{"role": "user", "content": "hi"}]}),
    "responses_stream": ("/v1/responses", {"model": "agent", "input": "hi", "stream": True,
                                           "tools": responses_tools()}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_too_large_with_tools_is_a_400_naming_the_sizes(app: App, case: str) -> None:
    path, body = CASES[case]
    r = app.post(path, body)
    assert r.status_code == 400, r.text
    text = r.text
    assert "num_ctx=64" in text and "with 6 tools" in text and "tokens" in text
    assert "CORRAL_CONTEXT_LENGTH" in text
    assert not [p for runner in app.engine.runners for p in runner.prompts]  # nothing reached the engine


def test_a_context_nobody_chose_grows_to_hold_the_tools(app: App) -> None:
    r = app.post("/api/chat", {"model": "agent", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                               "stream": False})
    assert r.status_code == 200, r.text
    runner = app.engine.runners[-1]
    assert runner.spec.options.num_ctx == 2048  # rounded up, capped at the trained context
    assert all(f"tool_{i}" in runner.prompts[0] for i in range(6))
    # a later plain request is served by the grown runner: no reload back to num_ctx=64
    r = app.post("/api/chat", {"model": "agent", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert r.status_code == 200, r.text
    assert app.engine.runners[-1] is runner and len(runner.prompts) == 2


def test_a_chosen_context_does_not_grow(app: App) -> None:
    r = app.post("/api/chat", {"model": "agent", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                               "options": {"num_ctx": 64}, "stream": False})
    assert r.status_code == 400, r.text
    assert "num_ctx=64" in r.text and "with 6 tools" in r.text
    assert not [p for runner in app.engine.runners for p in runner.prompts]


def test_old_turns_are_still_dropped_to_fit_with_tools(app: App) -> None:
    tools = TOOLS[:1]  # ~13 words of tools: fits once the long old turn is dropped
    messages = [{"role": "user", "content": "old " * 80}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "new question"}]
    r = app.post("/api/chat", {"model": "agent", "messages": messages, "tools": tools, "stream": False})
    assert r.status_code == 200, r.text
    prompt = app.engine.runners[0].prompts[0]
    assert "tool_0" in prompt and "new question" in prompt and "old old" not in prompt


def test_without_tools_the_runner_still_truncates(app: App) -> None:
    r = app.post("/api/chat", {"model": "agent", "stream": False,
                               "messages": [{"role": "user", "content": "word " * 200}]})
    assert r.status_code == 200, r.text
    assert app.engine.runners[0].prompts  # handed to the runner, which truncates (llama.cpp engine)


def test_slow_first_token_streams_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.server.compat import anthropic as anth

    monkeypatch.setattr(anth, "FIRST_CHUNK_WAIT", 0.05)
    monkeypatch.setattr(anth, "PING_EVERY", 0.05)
    app = App(tmp_path)
    app.engine.delay = 0.3  # a long prompt evaluation before the first token
    body = {"model": "agent", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    r = app.post("/v1/messages", body)
    assert r.status_code == 200
    kinds = [line.split(": ", 1)[1] for line in r.text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[1] == "ping"
    first_block = kinds.index("content_block_start")
    assert set(kinds[1:first_block]) == {"ping"} and kinds[-1] == "message_stop"
    assert kinds.count("message_start") == 1
    # the size check comes before the slow part, so a prompt too large is still a 400
    r = app.post("/v1/messages", {**body, "tools": anthropic_tools()})
    assert r.status_code == 400 and "num_ctx=64" in r.text


def test_anthropic_sdk_reads_a_stream_with_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anthropic
    import httpx2

    from corral.server.compat import anthropic as anth

    monkeypatch.setattr(anth, "FIRST_CHUNK_WAIT", 0.05)
    monkeypatch.setattr(anth, "PING_EVERY", 0.05)
    app = App(tmp_path)
    app.engine.delay = 0.2

    async def main() -> str:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app.app), base_url="http://127.0.0.1:11434")
        client = anthropic.AsyncAnthropic(base_url="http://127.0.0.1:11434", api_key="x", http_client=http,
                                          max_retries=0)
        async with client.messages.stream(model="agent", max_tokens=50,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
        await client.close()
        return text

    assert asyncio.run(main()) == "Hello world!"

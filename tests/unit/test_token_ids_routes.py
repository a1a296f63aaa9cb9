"""Token ids through the engine boundary, seen from the routes (scripted engine, no model):
/api/generate's `context` reaches the engine as ids (never detokenized to text), and a chat the fit
had to count runs the ids it counted (`prompt_tokens`), not its text tokenized a second time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.engine.base import GenerateParams
from corral.engine.fake import ScriptedRunner
from tests.appenv import Env, make_model, run

CHAT_TEMPLATE = "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}"


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path, system="Be brief.", context_length=256)
    make_model(e.store, tmp_path, "chat", template=CHAT_TEMPLATE)
    return e


def runner(env: Env) -> ScriptedRunner:
    return env.engine.runners[-1]


def last(env: Env) -> GenerateParams:
    return runner(env).params[-1]


def post(env: Env, path: str, body: dict[str, Any]) -> Any:
    async def main() -> Any:
        async with env.client() as c:
            return await c.post(path, json={"stream": False, **body})

    return run(main())


def test_generate_context_reaches_the_engine_as_ids(env: Env) -> None:
    r = post(env, "/api/generate", {"model": "tiny", "prompt": "hello", "context": [5, 3, 0]})
    assert r.status_code == 200, r.text
    params = last(env)
    assert params.context == [5, 3, 0]
    assert params.prompt == "[Be brief.] hello"  # no detokenized text in front of it
    assert params.prompt_tokens is None
    assert r.json()["prompt_eval_count"] == 3 + 3  # the fake: one id per word


def test_generate_without_context_sends_no_ids(env: Env) -> None:
    assert post(env, "/api/generate", {"model": "tiny", "prompt": "hello"}).status_code == 200
    assert last(env).context == [] and last(env).prompt_tokens is None


def long_chat(n: int) -> list[dict[str, str]]:
    body = [{"role": "system", "content": "RULES"}]
    body += [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 5} for i in range(n)]
    return [*body, {"role": "user", "content": "LAST"}]


def test_a_counted_chat_runs_the_ids_it_was_counted_with(env: Env) -> None:
    r = post(env, "/api/chat", {"model": "chat", "messages": long_chat(200)})
    assert r.status_code == 200, r.text
    params = last(env)
    assert params.prompt.startswith("system: RULES\n") and "turn 0 " not in params.prompt
    # the fake tokenizer's ids of exactly the text that runs: one id per word, its length
    assert params.prompt_tokens == [len(w) for w in params.prompt.split()]
    assert r.json()["prompt_eval_count"] == len(params.prompt.split()) < 256  # as when the text ran


def test_a_chat_too_short_to_count_runs_as_text(env: Env) -> None:
    assert post(env, "/api/chat", {"model": "chat", "messages": long_chat(2)}).status_code == 200
    assert last(env).prompt_tokens is None and last(env).prompt.endswith("user: LAST\n")


def test_a_chat_with_truncate_false_runs_as_text(env: Env) -> None:
    r = post(env, "/api/chat", {"model": "chat", "messages": long_chat(20), "truncate": False})
    assert r.status_code == 200, r.text
    assert last(env).prompt_tokens is None and "turn 0 " in last(env).prompt

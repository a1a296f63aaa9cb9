"""Token ids through the engine boundary on a real server (smollm2:135m, the shared `server`):
/api/generate's `context` runs exactly as sent, including ids that do not survive a trip through
text (a word split where the tokenizer would not split it, half of a UTF-8 character), bad ids are
a 400 that never reaches llama.cpp, and a chat the fit counted runs with the same prompt size and
output as the same chat sent as text."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "num_predict": 6}


def tokenize(c: httpx.Client, text: str, **kw: Any) -> list[int]:
    r = c.post("/api/tokenize", json={"model": MODEL, "content": text, **kw})
    assert r.status_code == 200, r.text
    return list(r.json()["tokens"])


def pieces(c: httpx.Client, text: str) -> list[tuple[int, Any]]:
    """(id, piece) of each token of `text`: a piece is a str, or a list of bytes when not UTF-8."""
    r = c.post("/api/tokenize", json={"model": MODEL, "content": text, "with_pieces": True})
    assert r.status_code == 200, r.text
    return [(t["id"], t["piece"]) for t in r.json()["tokens"]]


def detokenize(c: httpx.Client, ids: list[int]) -> str:
    r = c.post("/api/detokenize", json={"model": MODEL, "tokens": ids})
    assert r.status_code == 200, r.text
    return str(r.json()["content"])


def lossy_ids(c: httpx.Client) -> list[int]:
    """Ids that tokenizing their own text does not give back: "Hello" split in two, then the
    tokens of a character up to the middle of its bytes."""
    split = tokenize(c, "Hel") + tokenize(c, "lo")
    assert split != tokenize(c, "Hello")
    char = pieces(c, " 🦙")
    half = next(i for i, (_, piece) in enumerate(char) if isinstance(piece, list))  # not UTF-8 alone
    ids = split + [t for t, _ in char[: half + 1]]
    assert tokenize(c, detokenize(c, ids)) != ids  # what the old detokenize-retokenize path ran
    return ids


def test_generate_context_runs_exactly_the_ids_sent(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        ids = lossy_ids(c)
        body = {"model": MODEL, "prompt": "What is a llama?", "context": ids, "stream": False, "options": GREEDY}
        rendered = c.post("/api/generate", json={**body, "debug_render_only": True}).json()
        prompt = tokenize(c, rendered["_debug_info"]["rendered_template"])
        bos = tokenize(c, "", add_special=True)  # what the model puts in front of a prompt
        expected = bos + ids + prompt
        r = c.post("/api/generate", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["context"][: len(expected)] == expected
        assert answer["prompt_eval_count"] == len(expected)

        # the answer's context continues as it is: its ids come back unchanged in front of the next turn
        then = c.post("/api/generate", json={**body, "prompt": "And then?", "context": answer["context"]})
        assert then.status_code == 200, then.text
        assert then.json()["context"][: len(answer["context"])] == answer["context"]


@pytest.mark.parametrize("bad", [["a"], [1.5], [[1]], [None]])
def test_context_ids_that_are_not_ints_are_400(server: ServerProcess, bad: list[Any]) -> None:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        r = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "context": [1, *bad], "stream": False})
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("context.1: ")
        ok = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                           "options": {"num_predict": 2}})
        assert ok.status_code == 200 and ok.json()["done"]


def chat_turns(n: int) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": "You answer in one short sentence."}]
    for i in range(n):
        turns.append({"role": "user", "content": f"Question {i}: tell me something about rivers and lakes."})
        turns.append({"role": "assistant", "content": f"Answer {i}: rivers flow into lakes and seas."})
    return [*turns, {"role": "user", "content": "Name one river."}]


def rendered_size(c: httpx.Client, messages: list[dict[str, str]]) -> int:
    """Tokens of the chat as the template renders it (no BOS: what the fit counts)."""
    body = {"model": MODEL, "messages": messages, "debug_render_only": True}
    return len(tokenize(c, c.post("/api/chat", json=body).json()["_debug_info"]["rendered_template"]))


def test_a_counted_chat_runs_as_its_text_would(server: ServerProcess) -> None:
    """Over 2048 bytes (so the fit counts it) but under 2048 tokens (nothing dropped): the fit's ids
    run, with the prompt size of the same chat run from its text."""
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        messages = chat_turns(20)
        body = {"model": MODEL, "messages": messages, "stream": False, "options": GREEDY}
        rendered = c.post("/api/chat", json={**body, "debug_render_only": True}).json()
        assert len(rendered["_debug_info"]["rendered_template"].encode()) > 2048
        size = len(tokenize(c, "", add_special=True)) + rendered_size(c, messages)
        assert size < 2048
        counted = c.post("/api/chat", json=body)
        as_text = c.post("/api/chat", json={**body, "truncate": False})
        assert counted.status_code == 200 and as_text.status_code == 200, (counted.text, as_text.text)
        assert counted.json()["prompt_eval_count"] == as_text.json()["prompt_eval_count"] == size


def test_a_truncated_chat_runs_the_prompt_the_fit_counted(server: ServerProcess) -> None:
    """The oldest turns dropped as Ollama drops them (the longest suffix under num_ctx tokens), and
    exactly that prompt's tokens evaluated."""
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        messages = chat_turns(80)
        r = c.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False, "options": GREEDY})
        assert r.status_code == 200, r.text

        def kept(cut: int) -> list[dict[str, str]]:
            return [messages[0], *messages[1 + cut:]]

        lo, hi = 0, len(messages) - 2  # the smallest cut whose prompt fits lies in (lo, hi]
        assert rendered_size(c, kept(lo)) >= 2048 > rendered_size(c, kept(hi))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if rendered_size(c, kept(mid)) < 2048 else (mid, hi)
        expected = len(tokenize(c, "", add_special=True)) + rendered_size(c, kept(hi))
        assert r.json()["prompt_eval_count"] == expected

"""Chat truncation (`corral.server.native.truncate`, used by /api/chat): Ollama's rule (drop the oldest
non-system messages, keep system messages and the last one) in a bounded number of renders and
tokenizations, abandoned between steps when the caller is cancelled."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corral.config import Settings
from corral.engine.fake import ScriptedEngine
from corral.scheduler import Scheduler
from corral.schemas.native import Message
from corral.server.app import create_app
from corral.server.native.truncate import IMAGE_TOKENS, fit_chat
from corral.server.runtime import fit_messages
from corral.store.store import Store
from tests.appenv import make_model, run


class Counting:
    """A whitespace tokenizer and a `role: content` renderer that count their work."""

    def __init__(self, render_delay: float = 0.0) -> None:
        self.renders = 0
        self.rendered_messages = 0
        self.tokenizes = 0
        self.tokenized_chars = 0
        self.render_delay = render_delay
        self.render_started = threading.Event()

    def render(self, messages: list[Message]) -> str:
        self.render_started.set()
        if self.render_delay:
            time.sleep(self.render_delay)
        self.renders += 1
        self.rendered_messages += len(messages)
        return "".join(f"<{m.role}> {m.content} </{m.role}> " for m in messages) + "<assistant> "

    async def count(self, text: str) -> int:
        self.tokenizes += 1
        self.tokenized_chars += len(text)
        return len(text.split())

    async def tokenize(self, text: str) -> list[int]:
        """One id per word: the word's length."""
        await self.count(text)
        return [len(w) for w in text.split()]


def conversation(n: int, rng: random.Random | None = None) -> list[Message]:
    msgs = [Message(role="system", content="you are terse and kind")]
    for i in range(n):
        words = rng.randint(1, 40) if rng else 3
        msgs.append(Message(role="user" if i % 2 == 0 else "assistant", content=" ".join([f"w{i}"] * words)))
    msgs.append(Message(role="user", content="the last question"))
    return msgs


def ollama_reference(messages: list[Message], c: Counting, num_ctx: int) -> list[Message]:
    """Ollama's chatPrompt, quadratic: the longest suffix (plus earlier system messages) that fits."""
    for i in range(len(messages) - 1):
        kept = [m for m in messages[:i] if m.role == "system"] + messages[i:]
        if len(c.render(kept).split()) < num_ctx:
            return kept
    return [m for m in messages[:-1] if m.role == "system"] + messages[-1:]


@pytest.mark.parametrize("n", [3000, 10_000])
def test_work_is_linear_in_the_number_of_messages(n: int) -> None:
    c = Counting()
    messages = conversation(n)
    fitted = run(fit_chat(messages, c.render, c.tokenize, 2048))
    assert fitted.tokens is not None and fitted.tokens < 2048
    assert fitted.messages[0].content == "you are terse and kind"
    assert fitted.messages[-1].content == "the last question"
    assert c.renders <= 5 and c.tokenizes <= 5
    assert c.rendered_messages <= 3 * (n + 2)
    # only prompts near num_ctx are tokenized, never the whole conversation (llama.cpp's tokenizer
    # is quadratic in special tokens: 24 s for 10,000 ChatML turns)
    assert c.tokenized_chars <= 4 * len(fitted.prompt)


def test_fit_messages_tokenizes_a_few_times_not_once_per_dropped_message() -> None:
    c = Counting()
    job: Any = SimpleNamespace(options=SimpleNamespace(load=SimpleNamespace(num_ctx=2048)))
    runner: Any = SimpleNamespace(tokenize=c.tokenize)
    fitted = run(fit_messages(runner, job, conversation(3000), c.render))
    prompt = fitted.prompt
    assert fitted.ids == [len(w) for w in prompt.split()]  # the prompt's ids come back with it
    assert prompt.startswith("<system> you are terse and kind")
    assert prompt.endswith("<user> the last question </user> <assistant> ")
    assert len(prompt.split()) < 2048
    assert c.tokenizes <= 5 and c.renders <= 5


@pytest.mark.parametrize("seed", range(40))
def test_same_cut_as_ollama(seed: int) -> None:
    rng = random.Random(seed)
    messages = conversation(rng.randint(5, 120), rng)
    if seed % 3 == 0:
        messages.insert(len(messages) // 2, Message(role="system", content="a later system note"))
    num_ctx = rng.randint(60, 900)
    c = Counting()
    fitted = run(fit_chat(messages, c.render, c.tokenize, num_ctx))
    best = ollama_reference(messages, Counting(), num_ctx)
    kept = fitted.messages
    assert kept[-1] is messages[-1]
    assert [m for m in messages if m.role == "system"] == [m for m in kept if m.role == "system"]
    dropped = [m for m in messages if m not in kept]
    assert all(m.role != "system" for m in dropped)
    assert dropped == [m for m in messages if m.role != "system"][: len(dropped)]  # the oldest ones
    if len(best) > len([m for m in messages if m.role == "system"]) + 1:
        assert fitted.tokens is not None and fitted.tokens < num_ctx
    assert kept == best  # the same cut as the exhaustive search
    assert c.renders <= 12


def test_short_prompts_are_not_tokenized_and_nothing_is_dropped() -> None:
    c = Counting()
    messages = conversation(4)
    fitted = run(fit_chat(messages, c.render, c.tokenize, 2048))
    assert fitted.messages == messages and fitted.tokens is None and c.tokenizes == 0


def test_when_nothing_fits_the_system_messages_and_last_message_remain() -> None:
    c = Counting()
    messages = conversation(50)
    messages[-1] = Message(role="user", content="long " * 500)
    fitted = run(fit_chat(messages, c.render, c.tokenize, 100))
    assert [m.role for m in fitted.messages] == ["system", "user"]
    assert fitted.messages[-1] is messages[-1]
    assert fitted.tokens is not None and fitted.tokens > 100


def test_images_count_768_tokens_each() -> None:
    c = Counting()
    messages = conversation(6)
    messages[1] = messages[1].model_copy(update={"images": ["aGk=", "aGk="]})
    fitted = run(fit_chat(messages, c.render, c.tokenize, 2 * IMAGE_TOKENS))
    assert messages[1] not in fitted.messages  # the two images alone are 1536 tokens
    assert messages[2] in fitted.messages


def test_cancelling_stops_between_steps() -> None:
    c = Counting(render_delay=0.3)

    async def main() -> None:
        task = asyncio.ensure_future(fit_chat(conversation(400), c.render, c.tokenize, 64))
        await asyncio.to_thread(c.render_started.wait, 10)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.25  # not waiting for the render in progress
        await asyncio.sleep(0.5)  # the render in progress finishes in its thread, nothing follows it
        assert c.renders == 1 and c.tokenizes == 0

    run(main())


def test_chat_route_keeps_system_and_last_message_of_10000(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, context_length=256)
    engine = ScriptedEngine()
    store = Store(tmp_path / "models")
    app = create_app(settings, store, scheduler=Scheduler(engine, settings), prune_on_start=False)
    make_model(store, tmp_path, "chat", template="{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}")
    body = [{"role": "system", "content": "SYSTEM-RULES"}]
    body += [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(10_000)]
    body.append({"role": "user", "content": "LAST-QUESTION"})

    async def main() -> Any:
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434", timeout=60) as client:
            return await client.post("/api/chat", json={"model": "chat", "messages": body, "stream": False})

    started = time.monotonic()
    r = run(main())
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 30
    prompt = engine.runners[0].prompts[0]
    assert prompt.startswith("system: SYSTEM-RULES\n") and prompt.endswith("user: LAST-QUESTION\n")
    assert "turn 9999\n" in prompt and "turn 0\n" not in prompt
    assert 200 <= len(prompt.split()) < 256


def test_collate_joins_a_long_run_of_one_role_in_linear_time() -> None:
    from corral.template.godata import collate

    messages = [Message(role="user", content=f"m{i}") for i in range(60_000)]
    started = time.monotonic()
    system, merged = collate([Message(role="system", content="s"), *messages, Message(role="assistant", content="a")])
    assert time.monotonic() - started < 3  # was quadratic: each merge copied the whole run so far
    assert system == "s" and [m.role for m in merged] == ["system", "user", "assistant"]
    assert merged[1].content == "\n\n".join(m.content for m in messages)


def test_the_fitted_prompt_comes_with_its_ids_from_the_last_count() -> None:
    """The ids of the prompt that runs are the ones the fit counted (the runner does not tokenize
    the same text again); a prompt too short to count has none."""
    c = Counting()
    messages = conversation(300)
    fitted = run(fit_chat(messages, c.render, c.tokenize, 300))
    assert len(fitted.messages) < len(messages)
    assert fitted.ids == [len(w) for w in fitted.prompt.split()]
    assert fitted.tokens == len(fitted.ids) < 300
    short = run(fit_chat(conversation(2), c.render, c.tokenize, 2048))
    assert short.ids is None and short.tokens is None


def test_a_counted_prompt_that_keeps_everything_comes_with_its_ids() -> None:
    c = Counting()
    messages = [Message(role="system", content="s"), Message(role="user", content="x" * 400)]
    fitted = run(fit_chat(messages, c.render, c.tokenize, 100))  # 400 bytes: counted, 6 words
    assert fitted.messages == messages and fitted.ids == [len(w) for w in fitted.prompt.split()]

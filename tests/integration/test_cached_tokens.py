"""Cached prompt tokens on the compat APIs against a real `corral serve` (issue 13): the second of
two identical requests reuses the first one's KV state, and each API reports those tokens as its
official SDK reads them: OpenAI's `usage.prompt_tokens_details.cached_tokens` (chat completions,
streamed and not, and completions), the Responses API's `usage.input_tokens_details.cached_tokens`
and Anthropic's `usage.cache_read_input_tokens`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"
PROMPT = "List three facts about {}: where it is, how big it is, and one thing it is famous for."


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        yield c


def twice(ask: Callable[[], tuple[int, int]]) -> tuple[int, int]:
    """(prompt tokens, cached tokens) of the second of two identical requests; the first is cold."""
    prompt, cached = ask()
    assert 0 <= cached < prompt
    prompt_again, cached_again = ask()
    assert prompt_again == prompt
    return prompt_again, cached_again


def test_openai_chat_and_completions_report_cached_tokens(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": PROMPT.format("Lisbon")}]

    def chat() -> tuple[int, int]:
        r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, seed=1)  # type: ignore[arg-type]
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        return r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens or 0

    def chat_stream() -> tuple[int, int]:
        stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, seed=1,  # type: ignore[arg-type]
                                                stream=True, stream_options={"include_usage": True})
        usage = [c.usage for c in stream if c.usage is not None][-1]
        assert usage.prompt_tokens_details is not None
        return usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0

    def completion() -> tuple[int, int]:
        r = client.completions.create(model=MODEL, prompt=PROMPT.format("Oslo"), max_tokens=4, seed=1)
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        return r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens or 0

    for ask in (chat, chat_stream, completion):
        prompt, cached = twice(ask)
        assert prompt // 2 <= cached < prompt, ask.__name__


def test_responses_and_messages_report_cached_tokens(client: openai.OpenAI, server: ServerProcess) -> None:
    def responses() -> tuple[int, int]:
        r = client.responses.create(model=MODEL, input=PROMPT.format("Quito"), max_output_tokens=4)
        assert r.usage is not None
        return r.usage.input_tokens, r.usage.input_tokens_details.cached_tokens

    with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=120) as ac:
        def messages() -> tuple[int, int]:
            m = ac.messages.create(model=MODEL, max_tokens=4,
                                   messages=[{"role": "user", "content": PROMPT.format("Nairobi")}])
            return m.usage.input_tokens, m.usage.cache_read_input_tokens or 0

        for ask in (responses, messages):
            prompt, cached = twice(ask)
            assert prompt // 2 <= cached < prompt, ask.__name__

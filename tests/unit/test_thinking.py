"""ThinkingParser: splitting streamed text into thinking and content, for any token split."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.toolcalls import ThinkingParser
from tests.support import examples


def run(pieces: list[str], *, opened: bool = False, tags: tuple[str, str] = ("<think>", "</think>")
        ) -> tuple[str, str]:
    p = ThinkingParser(*tags, opened=opened)
    thinking, content = [], []
    for piece in pieces:
        t, c = p.feed(piece)
        thinking.append(t)
        content.append(c)
    t, c = p.finish()
    return "".join(thinking) + t, "".join(content) + c


def splits(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def test_basic_split_and_whitespace_after_tags() -> None:
    assert run(["<think>\n  I ponder.\n</think>\n\nAnswer."]) == ("I ponder.\n", "Answer.")


def test_no_opening_tag_is_all_content() -> None:
    assert run(["  Hello <think>x</think>"]) == ("", "  Hello <think>x</think>")


def test_tags_split_across_tokens() -> None:
    assert run(["<", "thi", "nk>", "a", "</", "thi", "nk", ">", "b"]) == ("a", "b")


def test_prompt_ended_with_opening_tag() -> None:
    assert run(["reasoning</think>done"], opened=True) == ("reasoning", "done")


def test_unclosed_thinking_is_flushed_as_thinking() -> None:
    assert run(["<think>still going </th"]) == ("still going </th", "")


def test_partial_close_that_is_not_the_tag_stays_thinking() -> None:
    assert run(["<think>a </thin", "g> b</think>c"]) == ("a </thing> b", "c")


def test_custom_tags() -> None:
    assert run(["<|begin_thought|>x<|end_thought|> y"], tags=("<|begin_thought|>", "<|end_thought|>")) == ("x", "y")


def test_streaming_emits_thinking_before_close_arrives() -> None:
    p = ThinkingParser()
    assert p.feed("<think>abc") == ("abc", "")
    assert not p.done
    assert p.feed("</think>x") == ("", "x")
    assert p.done


TEXTS = st.one_of(
    st.text(alphabet=st.sampled_from(list("ab <>/thinkT\n")), max_size=40),
    st.builds(lambda a, b, c: f"{a}<think>{b}</think>{c}",
              st.text(alphabet=" \n", max_size=3), st.text(max_size=20), st.text(max_size=20)),
)


@settings(max_examples=examples(300), deadline=None)
@given(TEXTS, st.lists(st.integers(min_value=0, max_value=200), max_size=8), st.booleans())
def test_any_split_equals_one_piece(text: str, cuts: list[int], opened: bool) -> None:
    whole = run([text], opened=opened)
    assert run(splits(text, cuts), opened=opened) == whole
    assert run(list(text), opened=opened) == whole


@settings(max_examples=examples(200), deadline=None)
@given(st.text(max_size=30).filter(lambda s: "</think>" not in s and s == s.strip()), st.text(max_size=30))
def test_thinking_and_content_are_recovered(thought: str, answer: str) -> None:
    thinking, content = run([f"<think>{thought}</think>{answer}"])
    assert thinking == thought
    assert content == answer.lstrip()

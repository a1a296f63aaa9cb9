"""Stop-string hold-back and UTF-8 assembly of streamed token pieces (no model)."""

from __future__ import annotations

from corral.engine.llamacpp.detok import StopMatcher, Utf8Assembler


def run_stop(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    m = StopMatcher(stops)
    out = [m.feed(p) for p in pieces]
    if not m.stopped:
        out.append(m.flush())
    return out, m.stopped


def test_stop_string_split_across_pieces_is_not_emitted() -> None:
    out, stopped = run_stop(["Hello", " wor", "ld<", "|end", "|> tail"], ("<|end|>",))
    assert stopped
    assert "".join(out) == "Hello world"
    assert out[2] == "ld"  # "<" held back because it may start the stop string


def test_false_partial_match_is_released() -> None:
    out, stopped = run_stop(["a<", "b", "c"], ("<|end|>",))
    assert not stopped
    assert out == ["a", "<b", "c", ""]


def test_earliest_of_several_stops_wins() -> None:
    out, stopped = run_stop(["one STOP two END"], ("END", "STOP"))
    assert stopped and "".join(out) == "one "


def test_held_text_flushed_at_end() -> None:
    out, stopped = run_stop(["x", "EN"], ("END",))
    assert not stopped and "".join(out) == "xEN" and out[1] == ""


def test_no_stops_passes_through() -> None:
    m = StopMatcher(())
    assert m.feed("abc") == "abc" and m.flush() == ""


def test_utf8_never_emits_half_a_character() -> None:
    data = "héllo 🙂 日本".encode()
    a = Utf8Assembler()
    parts = [a.feed(data[i : i + 1]) for i in range(len(data))]
    for p in parts:
        assert "\ufffd" not in p
    assert "".join(parts) + a.flush() == "héllo 🙂 日本"
    emoji = "🙂".encode()
    b = Utf8Assembler()
    assert b.feed(emoji[:2]) == "" and b.feed(emoji[2:3]) == "" and b.feed(emoji[3:]) == "🙂"


def test_utf8_incomplete_tail_replaced_on_flush() -> None:
    a = Utf8Assembler()
    assert a.feed(b"ok\xe6\x97") == "ok"
    assert a.flush() == "\ufffd"

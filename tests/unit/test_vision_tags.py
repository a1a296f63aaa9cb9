"""Where a request's images go in the prompt: Ollama's [img-N] tags, renumbered after the fit."""

from __future__ import annotations

import pytest

from corral.errors import BadRequestError
from corral.schemas.native import Message
from corral.server.native.vision import decode_images, placed, tag_messages, tag_raw


class Job:
    def __init__(self, *caps: str) -> None:
        self.capabilities = list(caps)


def test_tags_are_prefixed_or_replace_img_placeholders_numbered_over_the_conversation() -> None:
    msgs = [
        Message(role="user", content="first", images=["a", "b"]),
        Message(role="assistant", content="ok"),
        Message(role="user", content="look [img] here", images=["c"]),
    ]
    out = tag_messages(msgs)
    assert [m.content for m in out] == ["[img-0][img-1]first", "ok", "look [img-2] here"]
    assert out[0].images == ["a", "b"] and msgs[0].content == "first"  # the request is not mutated


def test_placed_renumbers_the_tags_left_after_the_fit_and_keeps_their_images() -> None:
    prompt, images = placed("<sys> [img-2] what now? [img-3]", [b"0", b"1", b"2", b"3"])
    assert prompt == "<sys> [img-0] what now? [img-1]"
    assert images == [b"2", b"3"]
    assert placed("no images [img-0]", []) == ("no images [img-0]", [])


def test_raw_prompts_get_their_images_first_unless_they_place_them() -> None:
    assert tag_raw("hello", 2) == "[img-0][img-1]hello"
    assert tag_raw("a [img-1] b [img-0]", 2) == "a [img-1] b [img-0]"
    assert tag_raw("hello", 0) == "hello"


def test_images_need_a_vision_model_and_valid_base64() -> None:
    with pytest.raises(BadRequestError, match=r'"m" does not support images \(the model has no vision projector\)'):
        decode_images(Job("completion"), ["aGk="], "m")
    assert decode_images(Job("completion", "vision"), ["aG\nk="], "m") == [b"hi"]
    with pytest.raises(BadRequestError, match="invalid image data"):
        decode_images(Job("vision"), ["not base64!"], "m")

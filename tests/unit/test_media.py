"""Image placement and image spans of the runner's vision path (no model)."""

from __future__ import annotations

import asyncio
import threading
from typing import cast

import pytest

from corral.engine.base import GenerateParams
from corral.engine.llamacpp.media import (
    MARKER,
    ImageSpan,
    MediaPrompt,
    PromptTokens,
    Vision,
    admit,
    place_images,
    prepare_ahead,
    pseudo_tokens,
)
from corral.errors import BadRequestError


def test_tags_become_markers_in_prompt_order() -> None:
    text, order = place_images("a [img-1] b [img-0] c", 2)
    assert text == f"a {MARKER} b {MARKER} c"
    assert order == [1, 0]


def test_only_the_first_tag_of_an_image_and_only_known_images_are_placed() -> None:
    text, order = place_images("[img-0][img-0] and [img-7]", 1)
    assert text == f"{MARKER}[img-0] and [img-7]"
    assert order == [0]


def test_an_image_the_prompt_does_not_place_is_a_400() -> None:
    with pytest.raises(BadRequestError, match=r"image 1 is not placed.*\[img-1\]"):
        place_images("[img-0] only one", 2)


def test_typed_markers_cannot_forge_an_image() -> None:
    text, order = place_images(f"{MARKER} [img-0]", 1)
    assert text == f" {MARKER}" and order == [0]


def test_pseudo_tokens_are_negative_and_differ_between_images() -> None:
    a, b = pseudo_tokens("aaaa", 16), pseudo_tokens("bbbb", 16)
    assert all(t < 0 for t in a + b)
    assert a == pseudo_tokens("aaaa", 16)
    assert not set(a) & set(b)


def test_text_runs_stop_at_images_and_reuse_never_ends_inside_one() -> None:
    media = MediaPrompt(spans=[ImageSpan(3, 16, None), ImageSpan(25, 4, None)])
    assert media.text_end(0, 100) == 3  # text up to the first image
    assert media.text_end(3, 100) == 3  # an image is next
    assert media.text_end(10, 100) == 10  # inside the image
    assert media.text_end(19, 100) == 25
    assert media.text_end(19, 22) == 22  # the step's budget
    assert media.text_end(29, 40) == 40
    assert media.pending(3) is media.spans[0] and media.pending(18) is media.spans[0]
    assert media.pending(19) is None
    assert [media.align(n) for n in (0, 3, 4, 18, 19, 26, 29)] == [0, 3, 3, 3, 19, 25, 29]


def test_a_runner_without_projector_refuses_images() -> None:
    params = GenerateParams(prompt="[img-0] hi", images=[b"\x89PNG"])
    with pytest.raises(BadRequestError, match="no projector layer"):
        admit(None, params, 1024)


def test_images_are_prepared_off_the_event_loop_thread_and_admitted_from_there() -> None:
    class Ahead:
        def __init__(self) -> None:
            self.thread: threading.Thread | None = None
            self.tokens = PromptTokens([1, -5, 2], MediaPrompt())
            self.params: GenerateParams | None = None

        def stash(self, params: GenerateParams) -> None:
            self.thread, self.params = threading.current_thread(), params

        def take(self, params: GenerateParams) -> PromptTokens | None:
            return self.tokens if params is self.params else None

    ahead = Ahead()
    params = GenerateParams(prompt="[img-0]", images=[b"png"])
    asyncio.run(prepare_ahead(cast(Vision, ahead), params))
    assert ahead.thread is not None and ahead.thread is not threading.main_thread()
    assert admit(cast(Vision, ahead), params, 1024) is ahead.tokens
    assert params.shift is False  # no context shift under image positions

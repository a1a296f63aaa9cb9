"""`corral run` prompts that name image files (Ollama's extractFileData rule)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from corral.cli.format import projector_rows
from corral.cli.images import attach_images, named_images
from corral.errors import BadRequestError
from tests.mmproj import png


def test_named_image_files_are_attached_and_taken_out_of_the_prompt(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.png", tmp_path / "my pic.PNG"
    a.write_bytes(png(4, 4, (1, 2, 3)))
    b.write_bytes(png(4, 4, (9, 9, 9)))
    escaped = str(b).replace(" ", "\\ ")
    text, images = attach_images(f"compare {a} with '{b}' and {escaped} please")
    assert text == "compare  with  and  please"
    assert images == [base64.b64encode(a.read_bytes()).decode()] + [base64.b64encode(b.read_bytes()).decode()] * 2
    assert f"Added image '{a}'" in capsys.readouterr().err


def test_paths_that_name_no_file_stay_text(tmp_path: Path) -> None:
    prompt = f"what about {tmp_path}/missing.jpg or ./nothing.png?"
    assert named_images(prompt) == []
    assert attach_images(prompt) == (prompt, [])


def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("just text")
    with pytest.raises(BadRequestError, match="invalid image type"):
        attach_images(f"read {fake}")


def test_show_prints_the_projector_as_ollama_does() -> None:
    info = {"general.architecture": "clip", "general.parameter_count": 312_890_000,
            "clip.vision.embedding_length": 1024, "clip.vision.projection_dim": 768}
    assert projector_rows(info) == [("architecture", "clip"), ("parameters", "312.89M"),
                                    ("embedding length", "1024"), ("dimensions", "768")]

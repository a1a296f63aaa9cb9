"""Model names per spec §6."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import InvalidNameError
from corral.names import ModelName
from tests.support import examples


@pytest.mark.parametrize(
    ("text", "parts", "short"),
    [
        ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest"), "llama3.2:latest"),
        ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m"), "smollm2:135m"),
        ("user/model:v1", ("registry.ollama.ai", "user", "model", "v1"), "user/model:v1"),
        ("hf.co/bartowski/Qwen-GGUF:Q4_K_M", ("hf.co", "bartowski", "Qwen-GGUF", "Q4_K_M"),
         "hf.co/bartowski/Qwen-GGUF:Q4_K_M"),
        ("localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t"), "localhost:5000/ns/m:t"),
        ("http://localhost:11434/library/m", ("localhost:11434", "library", "m", "latest"),
         "localhost:11434/library/m:latest"),
    ],
)
def test_parse_defaults_and_display(text: str, parts: tuple[str, ...], short: str) -> None:
    name = ModelName.parse(text)
    assert name.parts == parts
    assert name.display_shortest() == short


@pytest.mark.parametrize(
    "text",
    ["", "..", "../etc/passwd", "/abs/path", "a/../b", "ns.dot/model", "model:t/ag", "-lead", "a b",
     "m:" + "t" * 81, "x" * 81, "model:..", "a/b/c/d", "ftp://host/ns/m"],
)
def test_invalid_names(text: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid model name"):
        ModelName.parse(text)


def test_case_insensitive_identity() -> None:
    assert ModelName.parse("Llama3:Latest").matches(ModelName.parse("llama3"))
    assert not ModelName.parse("llama3:8b").matches(ModelName.parse("llama3"))


@settings(max_examples=examples(100))
@given(st.text(max_size=60))
def test_valid_names_are_safe_path_components(text: str) -> None:
    name = ModelName.try_parse(text)
    if name is None:
        return
    for part in name.parts:
        assert "/" not in part and part not in (".", "..") and not part.startswith(".")
    assert ModelName.parse(name.display_long()) == name

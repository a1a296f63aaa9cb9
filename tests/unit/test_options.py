"""Runtime options: merge order, types, Modelfile parameter parsing (spec §2)."""

from __future__ import annotations

import logging

import pytest

from corral.errors import BadRequestError
from corral.schemas.options import ResolvedOptions, parse_parameter


def test_merge_order_defaults_model_request() -> None:
    opts = ResolvedOptions.merge(
        {"temperature": 0.2, "top_k": 10, "stop": ["<|im_end|>"], "num_ctx": 2048},
        {"temperature": 0.5, "num_ctx": 1024},
        default_num_ctx=4096,
    )
    assert opts.sample.temperature == 0.5
    assert opts.sample.top_k == 10
    assert opts.sample.stop == ("<|im_end|>",)
    assert opts.sample.top_p == 0.9 and opts.sample.repeat_penalty == 1.0
    assert opts.load.num_ctx == 1024


def test_default_num_ctx_applies_without_overrides() -> None:
    assert ResolvedOptions.merge(None, None, default_num_ctx=8192).load.num_ctx == 8192


def test_unknown_keys_warn_and_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        opts = ResolvedOptions.merge(None, {"not_an_option": 1, "seed": 42})
    assert opts.sample.seed == 42
    assert "invalid option provided" in caplog.text


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [("top_k", "x", "integer"), ("temperature", "hot", "float32"), ("use_mmap", 1, "boolean"),
     ("stop", [1, 2], "array"), ("num_ctx", True, "integer")],
)
def test_wrong_types_are_400(key: str, value: object, kind: str) -> None:
    with pytest.raises(BadRequestError, match=f'option "{key}" must be of type {kind}'):
        ResolvedOptions.merge(None, {key: value})


def test_parse_parameter() -> None:
    assert parse_parameter("top_k", "40") == 40
    assert parse_parameter("temperature", "0.7") == 0.7
    assert parse_parameter("use_mmap", "false") is False
    assert parse_parameter("stop", "<|im_end|>") == "<|im_end|>"
    assert parse_parameter("mirostat", "1") is None
    with pytest.raises(BadRequestError, match="unknown parameter 'nope'"):
        parse_parameter("nope", "1")
    with pytest.raises(BadRequestError, match=r"invalid float value \[abc\]"):
        parse_parameter("temperature", "abc")
    with pytest.raises(BadRequestError, match=r"invalid int value \[x\]"):
        parse_parameter("top_k", "x")

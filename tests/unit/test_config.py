"""Settings: env mapping, Go bool rules, host parsing, derived values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from corral.config import HostURL, Settings, parse_env_bool
from corral.durations import format_go_duration, keep_alive_seconds, parse_go_duration
from corral.errors import BadRequestError


def test_defaults_and_derived(tmp_path: Path) -> None:
    cfg = Settings.from_env({"CORRAL_HOME": str(tmp_path)})
    assert cfg.models_dir == tmp_path / "models"
    assert cfg.host_url == HostURL("http", "127.0.0.1", 11434)
    assert cfg.keep_alive_seconds == 300
    assert cfg.default_num_ctx == 4096
    assert cfg.num_parallel == 4 and cfg.max_queue == 512 and cfg.max_runners == 3


def test_env_values_are_trimmed_and_typed(tmp_path: Path) -> None:
    cfg = Settings.from_env({
        "CORRAL_MODELS": f' "{tmp_path}" ', "CORRAL_NUM_PARALLEL": "8", "CORRAL_NOPRUNE": "yes-please",
        "CORRAL_KEEP_ALIVE": "-1", "CORRAL_CONTEXT_LENGTH": "8192", "CORRAL_UNRELATED": "x",
    })
    assert cfg.models_dir == tmp_path
    assert cfg.num_parallel == 8
    assert cfg.noprune is True  # unparseable non-empty means true (Ollama's rule)
    assert math.isinf(cfg.keep_alive_seconds)
    assert cfg.default_num_ctx == 8192


def test_overrides_win_and_none_is_ignored() -> None:
    cfg = Settings.from_env({"CORRAL_HOST": "0.0.0.0:1"}, host=None, num_parallel=2)
    assert cfg.host == "0.0.0.0:1" and cfg.num_parallel == 2


@pytest.mark.parametrize(("value", "expected"), [("", False), ("0", False), ("false", False),
                                                 ("1", True), ("TRUE", True), ("junk", True)])
def test_go_bools(value: str, expected: bool) -> None:
    assert parse_env_bool(value) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:11434", HostURL("http", "127.0.0.1", 11434)),
        ("0.0.0.0", HostURL("http", "0.0.0.0", 11434)),
        (":8080", HostURL("http", "", 8080)),
        ("https://example.com", HostURL("https", "example.com", 443)),
        ("http://[::1]:9000/base", HostURL("http", "::1", 9000, "/base")),
        ("localhost:99999", HostURL("http", "127.0.0.1", 11434)),
    ],
)
def test_host_parsing(text: str, expected: HostURL) -> None:
    assert HostURL.parse(text) == expected


def test_host_loopback_and_urls() -> None:
    assert HostURL.parse("127.0.0.1:1").is_loopback
    assert HostURL.parse("localhost:1").is_loopback
    assert not HostURL.parse("0.0.0.0:1").is_loopback
    assert HostURL.parse(":8080").bind_host == "0.0.0.0"
    assert HostURL.parse("0.0.0.0:8080").url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("1h30m", 5400), ("-1m", -60), ("0", 0),
                                               ("1.5s", 1.5), ("300ms", 0.3)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_keep_alive_wire_rules() -> None:
    assert keep_alive_seconds(None) is None
    assert keep_alive_seconds(10) == 10
    assert math.isinf(keep_alive_seconds(-1) or 0)
    assert keep_alive_seconds("5m") == 300
    with pytest.raises(BadRequestError):
        keep_alive_seconds("3600")  # unit-less strings are errors on the wire
    with pytest.raises(BadRequestError):
        keep_alive_seconds(True)


def test_format_go_duration() -> None:
    assert format_go_duration(300) == "5m0s"
    assert format_go_duration(3600) == "1h0m0s"
    assert format_go_duration(1.5) == "1.5s"
    assert format_go_duration(0) == "0s"

"""`corral run` option flags: llama.cpp aliases and `--parameter NAME=VALUE`, validated before any
server is contacted."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from corral.cli.run import request_options, run


def test_aliases_and_parameters_become_request_options() -> None:
    flags = {"num_gpu": 99, "num_ctx": 1024, "temperature": 0.0, "seed": 1, "num_predict": 8, "top_k": None}
    params = ("stop=<|im_end|>", "stop=###", "min_p=0.05", "use_mmap=false", "NUM_KEEP=2")
    assert request_options(flags, params) == {
        "stop": ["<|im_end|>", "###"], "min_p": 0.05, "use_mmap": False, "num_keep": 2,
        "num_gpu": 99, "num_ctx": 1024, "temperature": 0.0, "seed": 1, "num_predict": 8,
    }
    assert request_options({"num_ctx": 10}, ("num_ctx=10",)) == {"num_ctx": 10}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parameter", "nope=1"], "unknown option 'nope'"),
        (["--parameter", "mirostat=1"], "unknown option 'mirostat'"),
        (["--parameter", "temperature=hot"], "temperature: invalid float value [hot]"),
        (["--parameter", "num_ctx"], "expected NAME=VALUE, got 'num_ctx'"),
        (["--parameter", "num_ctx=10", "-c", "20"], "option num_ctx is given twice"),
        (["-ngl", "all"], "'all' is not a valid integer"),
        (["--temp", "warm"], "'warm' is not a valid float"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(run, ["smollm2:135m", *args, "hi"])
    assert result.exit_code == 2
    assert message in result.output


def test_flags_are_in_help() -> None:
    out = CliRunner().invoke(run, ["--help"]).output
    for flag in ("--num-gpu-layers", "-ngl", "--ctx-size", "-c,", "--temp", "--top-k", "--top-p", "--seed",
                 "--threads", "-t,", "--n-predict", "-n,", "--repeat-penalty", "--parameter NAME=VALUE"):
        assert flag in out

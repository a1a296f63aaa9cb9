"""The built-in template table (package data) and autodetection by Levenshtein distance."""

from __future__ import annotations

import json
import time
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.template.builtin import (
    BuiltinTemplate,
    builtin_templates,
    detect_template,
    get_builtin,
    levenshtein,
    reference_jinja,
)
from tests.ggufs import smollm2_chat_template
from tests.support import examples

NAMES = [
    "alfred", "alpaca", "chatml", "chatqa", "codellama-70b-instruct", "command-r",
    "falcon-instruct", "gemma-instruct", "gemma3-instruct", "granite-instruct", "llama2-chat",
    "llama3-instruct", "magicoder", "mistral-instruct", "openchat", "phi-3", "solar-instruct",
    "starcoder2-instruct", "vicuna", "zephyr",
]  # fmt: skip


def _naive_levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_every_spec_name_is_built_in() -> None:
    assert sorted(builtin_templates()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_builtin_has_template_and_stop_params(name: str) -> None:
    builtin = get_builtin(name)
    assert isinstance(builtin, BuiltinTemplate)
    assert builtin.name == name
    assert "{{" in builtin.template
    stops = builtin.params["stop"]
    assert stops and all(isinstance(s, str) and s for s in stops)


def test_known_params() -> None:
    assert get_builtin("chatml").params == {"stop": ["<|im_start|>", "<|im_end|>"]}
    assert get_builtin("gemma3-instruct").params == {"stop": ["<end_of_turn>"], "temperature": 0.1}
    assert get_builtin("llama3-instruct").params["stop"][-1] == "<|eot_id|>"


def test_unknown_name_raises_key_error() -> None:
    with pytest.raises(KeyError):
        get_builtin("no-such-template")


def test_package_data_lives_next_to_module() -> None:
    files = resources.files("corral.template").joinpath("builtin")
    index = json.loads(files.joinpath("index.json").read_text(encoding="utf-8"))
    assert {entry["name"] for entry in index} <= set(NAMES)


def test_reference_jinja_exists_for_every_name() -> None:
    for name in NAMES:
        text = reference_jinja(name)
        assert text is not None and "messages" in text, name
    assert reference_jinja("no-such-template") is None


def test_smollm2_template_detects_as_chatml_without_a_pathological_cost() -> None:
    text = smollm2_chat_template()
    detect_template(text)  # warm the caches (loading package data is not part of the bound)
    start = time.perf_counter()
    detected = detect_template(text)
    elapsed = time.perf_counter() - start
    assert detected is not None and detected.name == "chatml"
    # a guard against a quadratic blow-up (seconds), not a benchmark: ~6 ms idle, 64 ms seen on a
    # machine loaded 7x over its cores
    assert elapsed < 1.0


def test_index_entries_detect_as_their_own_name() -> None:
    files = resources.files("corral.template").joinpath("builtin")
    for entry in json.loads(files.joinpath("index.json").read_text(encoding="utf-8")):
        detected = detect_template(entry["template"])
        assert detected is not None and detected.name == entry["name"]


def test_small_edit_still_detects_and_unrelated_text_does_not() -> None:
    chatml = reference_jinja("chatml")
    assert chatml is not None
    edited = chatml.replace("add_generation_prompt", "add_gen_prompt")
    detected = detect_template(edited)
    assert detected is not None and detected.name == "chatml"
    assert detect_template("{{ messages | tojson }}" * 20) is None
    assert detect_template("") is None


@settings(max_examples=examples(100))
@given(st.text(alphabet="abc\u00e9", max_size=25), st.text(alphabet="abc\u00e9", max_size=25))
def test_levenshtein_matches_naive_dp(a: str, b: str) -> None:
    assert levenshtein(a, b) == _naive_levenshtein(a, b)


@settings(max_examples=examples(100))
@given(st.text(alphabet="ab", max_size=30), st.text(alphabet="ab", max_size=30), st.integers(1, 10))
def test_levenshtein_cutoff_never_hides_a_closer_match(a: str, b: str, cutoff: int) -> None:
    exact = _naive_levenshtein(a, b)
    bounded = levenshtein(a, b, cutoff=cutoff)
    if exact < cutoff:
        assert bounded == exact
    else:
        assert bounded >= cutoff

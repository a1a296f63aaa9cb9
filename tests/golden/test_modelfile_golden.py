"""Golden Modelfiles: parse -> create fields, and parse -> Ollama serialization, both checked in.

Each `modelfiles/<name>.Modelfile` has `<name>.json` ({"create_fields", "warnings"}) and
`<name>.serialized` (Modelfile.String()). The expected files were generated once and reviewed by
hand; a change in output is a failure to look at, not something to regenerate blindly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.modelfile import parse, to_create_fields

HERE = Path(__file__).parent / "modelfiles"
CASES = sorted(p.stem for p in HERE.glob("*.Modelfile"))


def test_there_are_enough_golden_modelfiles() -> None:
    assert len(CASES) >= 6


@pytest.mark.parametrize("name", CASES)
def test_create_fields(name: str) -> None:
    mf = parse((HERE / f"{name}.Modelfile").read_bytes())
    expected = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    assert to_create_fields(mf) == expected["create_fields"]
    assert mf.warnings == expected["warnings"]


@pytest.mark.parametrize("name", CASES)
def test_serialization(name: str) -> None:
    mf = parse((HERE / f"{name}.Modelfile").read_bytes())
    expected = (HERE / f"{name}.serialized").read_bytes().decode("utf-8")
    assert str(mf) == expected


@pytest.mark.parametrize("name", CASES)
def test_serialization_parses_back_to_the_same_commands(name: str) -> None:
    mf = parse((HERE / f"{name}.Modelfile").read_bytes())
    again = parse(str(mf))
    assert again.commands == mf.commands
    assert to_create_fields(again) == to_create_fields(mf)


def test_crlf_bom_file_is_checked_in_with_crlf_and_bom() -> None:
    raw = (HERE / "crlf_bom.Modelfile").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in raw

"""Reading the JSON files of a Hugging Face model directory, and typed access to config.json.

Owns turning a missing or malformed file, or a missing or mistyped hyperparameter, into one
clear `BadRequestError` naming the file and key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.errors import BadRequestError


def read_json(path: Path, *, required: bool = True) -> Any:
    """The parsed file; None when it is absent and not `required`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise BadRequestError(f"{path.name} not found: a safetensors model needs it") from None
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise BadRequestError(f"{path.name}: cannot read: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequestError(f"{path.name}: invalid JSON: {e}") from None


class Hparams:
    """config.json's hyperparameters (for multimodal configs, the text model's merged on top)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value is None else value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequestError(f"config.json: {key} must be an integer, got {value!r}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequestError(f"config.json: {key} must be a number, got {value!r}")
        return float(value)

    def has(self, key: str) -> bool:
        return self.values.get(key) is not None

"""The one error type of the Go template interpreter, with Go-style positions.

Owns: `TemplateError` (a 400 `BadRequestError`) and turning a character offset into the
"template: <name>:<line>:<col>: <message>" text Go prints. Does not own lexing or execution.
"""

from __future__ import annotations

from corral.errors import BadRequestError

__all__ = ["TemplateError", "position", "template_error"]


class TemplateError(BadRequestError):
    """A template that does not parse or fails while executing."""


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of `offset` within `text`."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    line_start = text.rfind("\n", 0, offset) + 1
    return line, offset - line_start + 1


def template_error(name: str, text: str, offset: int, message: str) -> TemplateError:
    """A `TemplateError` whose message carries the position of `offset` in Go's style."""
    line, col = position(text, offset)
    return TemplateError(f"template: {name}:{line}:{col}: {message}")

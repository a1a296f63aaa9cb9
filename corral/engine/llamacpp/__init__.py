"""The llama.cpp engine: one runner process per loaded model, continuous batching inside it.

Public entry points live in `proc` (`LlamaCppEngine`, `LlamaCppRunner`); `runner` is the child
process. Importing this package does not import llama_cpp (only the child process needs it).
"""

from __future__ import annotations

from .proc import LlamaCppEngine, LlamaCppRunner

__all__ = ["LlamaCppEngine", "LlamaCppRunner"]

"""Typed native chat chunks for translator tests: the JSON objects `/api/chat` streams, as the
`ChatResponse`s the OpenAI, Responses and Anthropic translators consume."""

from __future__ import annotations

from typing import Any

from corral.schemas.native import ChatResponse


def chat_chunk(body: dict[str, Any]) -> ChatResponse:
    """`body` as a chunk of model "m" (`message.role` defaults to assistant)."""
    message = {"role": "assistant", **body.get("message", {})}
    return ChatResponse.model_validate({"model": "m", "created_at": "2026-01-01T00:00:00Z", **body,
                                        "message": message})

"""Request types of the Anthropic-compatible Messages API (`/v1/messages`, spec §1).

Content may be a plain string or a list of blocks (text, image, tool_use, tool_result, thinking);
blocks stay dicts and are translated by `corral.server.compat.anthropic`. Unknown fields are accepted
and logged by the route, never rejected.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from corral.schemas.openai import OpenAIModel


class AnthropicMessage(OpenAIModel):
    role: str
    content: str | list[dict[str, Any]] = ""

    def blocks(self) -> list[dict[str, Any]]:
        if isinstance(self.content, str):
            return [{"type": "text", "text": self.content}]
        return list(self.content)


class AnthropicTool(OpenAIModel):
    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ThinkingConfig(OpenAIModel):
    type: str = "disabled"
    budget_tokens: int | None = None


class OutputConfig(OpenAIModel):
    effort: str | None = None


class MessagesRequest(OpenAIModel):
    model: str
    max_tokens: int = 0
    messages: list[AnthropicMessage] = Field(default_factory=list)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: ThinkingConfig | None = None
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None

"""Hugging Face chat templates (GGUF `tokenizer.chat_template`) rendered with Jinja.

Owns: a sandboxed Jinja environment configured as transformers' `apply_chat_template` does
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, a no-op
`{% generation %}` block, the `raise_exception` and `strftime_now` globals, a `tojson` filter
with ensure_ascii=False), the message/tool dictionaries templates expect, and mapping every
Jinja failure to `TemplateError` (HTTP 400). Does not own Go templates or choosing between paths.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Sequence
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.schemas.native import Message, Tool
from corral.template.gotemplate.errors import TemplateError

__all__ = ["jinja_messages", "render_jinja"]


class _GenerationBlock(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}`: renders its body unchanged."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's API is a class attribute

    def parse(self, parser: Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compile(chat_template: str) -> jinja2.Template:
    return _environment().from_string(chat_template)


def jinja_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as the dictionaries HF templates read (OpenAI-style tool calls)."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        item: dict[str, Any] = {"role": msg.role, "content": msg.content}
        if msg.thinking:
            item["reasoning_content"] = msg.thinking
        if msg.tool_calls:
            item["tool_calls"] = [
                {
                    "type": "function",
                    **({"id": c.id} if c.id else {}),
                    "function": {"name": c.function.name, "arguments": dict(c.function.arguments)},
                }
                for c in msg.tool_calls
            ]
        if msg.tool_name:
            item["name"] = msg.tool_name
        if msg.tool_call_id:
            item["tool_call_id"] = msg.tool_call_id
        out.append(item)
    return out


def render_jinja(
    chat_template: str,
    messages: Sequence[Message],
    *,
    tools: Sequence[Tool] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    enable_thinking: bool | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Render a Hugging Face chat template; raises TemplateError for any template failure."""
    context: dict[str, Any] = {
        "messages": jinja_messages(messages),
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    if tools:
        context["tools"] = [t.model_dump(exclude_none=True) for t in tools]
    if enable_thinking is not None:
        context["enable_thinking"] = enable_thinking
    context.update(extra or {})
    try:
        return _compile(chat_template).render(**context)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TemplateError(f"template: chat_template:{exc.lineno}: {exc.message}") from None
    except jinja2.exceptions.TemplateError as exc:
        raise TemplateError(f"template: chat_template: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as exc:
        raise TemplateError(f"template: chat_template: {type(exc).__name__}: {exc}") from None

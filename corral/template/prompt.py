"""Prompt rendering from a model's Go template, exactly as Ollama's template.Execute does.

Owns: `render_chat` (/api/chat), `render_generate` (/api/generate), the template values
(.System .Messages .Tools .Prompt .Suffix .Response .Think .ThinkLevel .IsThinkSet), appending
`{{ .Response }}` to templates that use neither `.Messages` nor `.Response`, legacy per-turn
execution for templates without `.Messages`, and the template-derived hints
`infer_tool_call_tag` / `infer_thinking_tags`. Does not own the Jinja path (`jinja`), prompt
truncation to the context window, or parsing model output.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.schemas.native import Message, Tool
from corral.template import godata
from corral.template.gotemplate import GoTemplate
from corral.template.gotemplate import nodes as n
from corral.template.jinja import render_jinja

__all__ = [
    "infer_thinking_tags",
    "infer_tool_call_tag",
    "parse_template",
    "render_chat",
    "render_generate",
    "render_jinja",
]


@functools.lru_cache(maxsize=64)
def parse_template(text: str) -> GoTemplate:
    """Parse a model template once (cached); adds `{{ .Response }}` as Ollama's Parse does."""
    tmpl = GoTemplate.parse(text)
    names = tmpl.variables()
    if "messages" not in names and "response" not in names:
        tmpl = tmpl.with_response()
    return tmpl


@dataclass
class _Values:
    messages: list[Message] = field(default_factory=list)
    tools: Sequence[Tool] | None = None
    prompt: str = ""
    suffix: str = ""
    think: bool = False
    think_level: str = ""
    is_think_set: bool = False

    def thinking(self) -> dict[str, Any]:
        return {"Think": self.think, "ThinkLevel": self.think_level, "IsThinkSet": self.is_think_set}


def _execute(tmpl: GoTemplate, values: _Values) -> str:
    system, messages = godata.collate(values.messages)
    if values.prompt and values.suffix:
        data = {"Prompt": values.prompt, "Suffix": values.suffix, "Response": "", **values.thinking()}
        return tmpl.execute(data)
    names = tmpl.variables()
    if "messages" in names or "document" in names:
        data = {
            "System": system,
            "Messages": [godata.message_value(m) for m in messages],
            "Tools": godata.tools_value(values.tools),
            "Response": "",
            **values.thinking(),
        }
        return tmpl.execute(data)
    return _execute_legacy(tmpl, messages, values)


def _execute_legacy(tmpl: GoTemplate, messages: list[Message], values: _Values) -> str:
    """Execute once per user/assistant turn, then once more cut after `.Response`."""
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(tmpl.execute({**turn, **values.thinking()}))
        turn.update(System="", Prompt="", Response="")

    for msg in messages:
        if msg.role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = msg.content
        elif msg.role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = msg.content
        elif msg.role == "assistant":
            turn["Response"] = msg.content
    out.append(tmpl.cut_after_response().execute({**turn, **values.thinking()}))
    return "".join(out)


def render_chat(
    template: str,
    messages: Sequence[Message],
    *,
    tools: Sequence[Tool] | None = None,
    think: bool | None = None,
    think_level: str | None = None,
    is_think_set: bool = False,
) -> str:
    """The prompt for /api/chat from a Go template (raises TemplateError on bad templates)."""
    values = _Values(
        messages=list(messages),
        tools=tools,
        think=bool(think),
        think_level=think_level or "",
        is_think_set=is_think_set,
    )
    return _execute(parse_template(template), values)


def render_generate(
    template: str,
    *,
    prompt: str,
    system: str | None,
    suffix: str | None = None,
    images: Sequence[str] | None = None,
    history: Sequence[Message] | None = None,
    think: bool | None = None,
    think_level: str | None = None,
    is_think_set: bool = False,
) -> str:
    """The prompt for /api/generate (not raw): system, the model's MESSAGES, then the prompt.

    `system` is the request's system prompt or else the model's; with a `suffix`, the template
    gets only .Prompt/.Suffix (fill-in-the-middle), as Ollama's GenerateHandler does.
    """
    values = _Values(think=bool(think), think_level=think_level or "", is_think_set=is_think_set)
    if suffix:
        values.prompt, values.suffix = prompt, suffix
    else:
        if system:
            values.messages.append(Message(role="system", content=system))
        values.messages.extend(history or [])
        values.messages.append(Message(role="user", content=prompt, images=list(images) if images else None))
    return _execute(parse_template(template), values)


# -- hints derived from the template tree ---------------------------------------------------------


def _pipe_has_field(pipe: n.PipeNode, name: str) -> bool:
    for cmd in pipe.cmds:
        for arg in cmd.args:
            if isinstance(arg, n.FieldNode) and name in arg.idents:
                return True
            if isinstance(arg, n.VariableNode) and name in arg.idents[1:]:
                return True
    return False


def _find_tool_calls_if(nodes: Sequence[n.Node]) -> n.IfNode | None:
    for node in nodes:
        if isinstance(node, n.IfNode) and _pipe_has_field(node.pipe, "ToolCalls"):
            return node
        lists: list[n.ListNode | None] = []
        if isinstance(node, (n.IfNode, n.RangeNode, n.WithNode)):
            lists = [node.body, node.else_body]
        elif isinstance(node, n.ListNode):
            lists = [node]
        for child in lists:
            if child is not None and (found := _find_tool_calls_if(child.nodes)) is not None:
                return found
    return None


def _first_text(nodes: Sequence[n.Node]) -> n.TextNode | None:
    for node in nodes:
        if isinstance(node, n.TextNode):
            return node
        if isinstance(node, (n.IfNode, n.RangeNode, n.WithNode)):
            for child in (node.body, node.else_body):
                if child is not None and (found := _first_text(child.nodes)) is not None:
                    return found
            return None
        elif isinstance(node, n.ListNode):
            if (found := _first_text(node.nodes)) is not None:
                return found
        elif isinstance(node, n.ActionNode):
            return None
    return None


@functools.lru_cache(maxsize=64)
def infer_tool_call_tag(template: str) -> str | None:
    """Ollama's parseTag: the first text inside `{{ if .ToolCalls }}`, trimmed, up to the first
    `{` (e.g. `<tool_call>`, `[TOOL_CALLS] [`); `{` when that is empty; None without the block."""
    tmpl = GoTemplate.parse(template)
    block = _find_tool_calls_if(tmpl.root.nodes)
    if block is None:
        return None
    text = _first_text(block.body.nodes)
    if text is None:
        return "{"
    tag = text.text.strip().replace("\r\n", "\n").split("{", 1)[0]
    return tag or "{"


@functools.lru_cache(maxsize=64)
def infer_thinking_tags(template: str) -> tuple[str, str] | None:
    """Ollama's InferTags: around `.Thinking` inside `range .Messages`, the first and last text
    of the nearest enclosing list (e.g. `<think>` / `</think>`); None when not found."""
    tmpl = GoTemplate.parse(template)
    found: list[tuple[str, str]] = []
    _visit_thinking(tmpl.root, [], found)
    if not found:
        return None
    opening, closing = found[-1]
    return (opening, closing) if opening and closing else None


def _visit_thinking(node: Any, ancestors: list[Any], found: list[tuple[str, str]]) -> None:
    ancestors.append(node)
    if isinstance(node, n.FieldNode) and node.idents and node.idents[0] == "Thinking":
        ranges = [a for a in ancestors if isinstance(a, n.RangeNode)]
        if ranges and _pipe_has_field(ranges[-1].pipe, "Messages"):
            lists = [a for a in ancestors if isinstance(a, n.ListNode)]
            if lists and lists[-1].nodes:
                first, last = lists[-1].nodes[0], lists[-1].nodes[-1]
                opening = first.text.strip() if isinstance(first, n.TextNode) else ""
                closing = last.text.strip() if isinstance(last, n.TextNode) else ""
                found.append((opening, closing))
    for child in _children(node):
        _visit_thinking(child, ancestors, found)
    ancestors.pop()


def _children(node: Any) -> list[Any]:
    if isinstance(node, n.ListNode):
        return list(node.nodes)
    if isinstance(node, (n.IfNode, n.RangeNode, n.WithNode)):
        return [node.pipe, node.body] + ([node.else_body] if node.else_body is not None else [])
    if isinstance(node, (n.ActionNode, n.TemplateNode)):
        return [node.pipe] if node.pipe is not None else []
    if isinstance(node, n.PipeNode):
        return [arg for cmd in node.cmds for arg in cmd.args]
    if isinstance(node, n.ChainNode):
        return [node.node]
    return []

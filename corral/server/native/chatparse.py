"""Per-request output handling for /api/chat and /api/generate: thinking, tool calls, grammar.

Owns the decisions of spec §1/§8 that sit between a request and the engine: whether thinking is
on (`think` true/false/level; default true for thinking-capable models), which tags split it,
which tool-call tag the template implies (Jinja-only models: `<tool_call>`), `tool_choice`
(corral extension), and which GBNF grammar constrains decoding (`format`, or a forced tool call;
while thinking, the grammar lets a free `<think>...</think>` block come first). `OutputSplitter`
turns streamed text into (thinking, content, tool calls). Does not own rendering or the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.errors import BadRequestError, CorralError
from corral.grammar import format_grammar, tool_call_grammar, with_thinking
from corral.schemas.native import ChatRequest, GenerateRequest, Tool, ToolCall
from corral.server.runtime import Job
from corral.template.prompt import infer_thinking_tags, infer_tool_call_tag
from corral.toolcalls import ThinkingParser, ToolCallParser

DEFAULT_THINK_TAGS = ("<think>", "</think>")
JINJA_TOOL_TAG = "<tool_call>"


@dataclass
class Plan:
    """What a request asks of the output: rendering inputs, parsers to run, grammar to apply."""

    think: bool | None = None
    think_tags: tuple[str, str] | None = None
    render_tools: list[Tool] | None = None
    parse_tools: list[Tool] = field(default_factory=list)
    tool_tag: str | None = None
    format_grammar: str | None = None
    forced_tool: bool = False
    forced_name: str | None = None

    def grammar(self, prompt: str) -> str | None:
        """The grammar for this prompt (thinking may add a free prefix, or turn the grammar off)."""
        base = self.format_grammar
        if self.forced_tool:
            base = tool_call_grammar(self.parse_tools, self.tool_tag, self.forced_name)
        if base is None or not self.thinking_on:
            return base
        assert self.think_tags is not None
        open_tag, close_tag = self.think_tags
        return with_thinking(base, open_tag, close_tag, opened=prompt.rstrip().endswith(open_tag))

    @property
    def thinking_on(self) -> bool:
        return bool(self.think) and self.think_tags is not None

    def splitter(self, prompt: str) -> OutputSplitter:
        thinker = None
        if self.thinking_on:
            assert self.think_tags is not None
            open_tag, close_tag = self.think_tags
            thinker = ThinkingParser(open_tag, close_tag, opened=prompt.rstrip().endswith(open_tag))
        tools = ToolCallParser(self.tool_tag, self.parse_tools) if self.parse_tools else None
        return OutputSplitter(thinker, tools)


@dataclass
class Piece:
    thinking: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.thinking or self.content or self.tool_calls)


class OutputSplitter:
    """Streamed text → thinking, content and tool calls (tool calls are parsed after thinking)."""

    def __init__(self, thinker: ThinkingParser | None, tools: ToolCallParser | None) -> None:
        self.thinker = thinker
        self.tools = tools

    def feed(self, text: str, *, final: bool = False) -> Piece:
        thinking, content = ("", text) if self.thinker is None else self.thinker.feed(text)
        if final and self.thinker is not None:
            more_thinking, more_content = self.thinker.finish()
            thinking, content = thinking + more_thinking, content + more_content
        if self.tools is None:
            return Piece(thinking, content)
        content, calls = self.tools.feed(content)
        if final:
            rest, more = self.tools.finish()
            content, calls = content + rest, calls + more
        return Piece(thinking, content, calls)


def _template_of(job: Job, override: str | None = None) -> str | None:
    return override or job.model.template or None


def _think_value(job: Job, raw: Any, model: str) -> bool | None:
    """Spec: bool or a level (levels mean on); unset → on for thinking-capable models."""
    capable = "thinking" in job.capabilities
    if raw is None:
        return True if capable else None
    on = bool(raw)
    if on and not capable:
        raise BadRequestError(f'"{model}" does not support thinking')
    return on


def _think_tags(job: Job, template: str | None) -> tuple[str, str] | None:
    if template:
        try:
            tags = infer_thinking_tags(template)
        except CorralError:
            tags = None
        if tags is not None:
            return tags
    if "thinking" in job.capabilities:
        return DEFAULT_THINK_TAGS
    return None


def tool_tag_for(job: Job) -> str | None:
    """The template's tool-call tag; `<tool_call>` for models rendered with their Jinja template."""
    if job.model.template:
        try:
            return infer_tool_call_tag(job.model.template)
        except CorralError:
            return None
    if job.info is not None and job.info.chat_template:
        return JINJA_TOOL_TAG
    return None


def parse_tool_choice(choice: Any, tools: list[Tool] | None) -> tuple[str, str | None]:
    """(mode, function name): mode is none | auto | required; a named function is required."""
    if choice is None or choice == "auto":
        return "auto", None
    if choice in ("none", "required"):
        if choice == "required" and not tools:
            raise BadRequestError('tool_choice "required" needs tools')
        return str(choice), None
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if isinstance(name, str) and name:
            if not any(t.function.name == name for t in tools or []):
                raise BadRequestError(f"tool_choice names an unknown function: {name}")
            return "required", name
    raise BadRequestError(
        'invalid tool_choice: expected "none", "auto", "required" or {"type":"function","function":{"name":...}}'
    )


def chat_plan(job: Job, req: ChatRequest) -> Plan:
    """Validate the chat request's tools/tool_choice/think/format and decide how to handle output."""
    mode, name = parse_tool_choice(req.tool_choice, req.tools)
    tools = list(req.tools or []) if mode != "none" else []
    if tools and "tools" not in job.capabilities:
        raise BadRequestError(f"{job.model.name.display_long()} does not support tools")
    think = _think_value(job, req.think, req.model)
    plan = Plan(think=think, think_tags=_think_tags(job, job.model.template) if think else None,
                render_tools=tools or None, parse_tools=tools, format_grammar=format_grammar(req.format))
    if tools:
        plan.tool_tag = tool_tag_for(job)
        plan.forced_tool = mode == "required"
        plan.forced_name = name
    return plan


def generate_plan(job: Job, req: GenerateRequest) -> Plan:
    """Validate the generate request's think/format; raw prompts are never split into thinking."""
    think = _think_value(job, req.think, req.model)
    tags = _think_tags(job, _template_of(job, req.template)) if think and not req.raw else None
    return Plan(think=think, think_tags=tags, format_grammar=format_grammar(req.format))

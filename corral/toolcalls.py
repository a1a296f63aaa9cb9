"""Streaming parsers for model output: tool calls (spec §8, tools/) and thinking (thinking/).

Owns `ToolCallParser` (text pieces in, content text and `ToolCall`s out, as they become certain)
and `ThinkingParser` (text pieces in, thinking and content out). Both are pure and incremental:
any split of a stream into pieces gives the same result as one piece. Does not own inferring the
tags from a template (`corral.template.prompt`), grammars (`corral.grammar`) or the wire shapes.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Sequence
from typing import Any

from corral.schemas.native import Tool, ToolCall, ToolCallFunction

_ID_ALPHABET = string.ascii_lowercase + string.digits
_FENCE = "```"
_WS = " \t\r\n"


def tool_call_id() -> str:
    """`call_` + 8 random [a-z0-9], as Ollama's toolCallId."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _xml_open(tag: str) -> bool:
    return tag.startswith("<") and tag.endswith(">") and not tag.startswith("</")


def list_tag_head(tag: str | None) -> str | None:
    """`<x>` for a tag `<x>[`: an XML tag that opens a JSON list of calls (SmolLM2's
    `<tool_call>[{...}, ...]</tool_call>`); None for any other tag."""
    body = (tag or "").rstrip()
    if not body.endswith("["):
        return None
    head = body[:-1].rstrip()
    return head if _xml_open(head) else None


def closing_tag(tag: str | None) -> str:
    """The text that closes a tool-call tag: `</x>` for `<x>`, `]</x>` for `<x>[`, `]` for
    another tag ending in `[` (`[TOOL_CALLS] [`)."""
    if not tag or tag == "{":
        return ""
    if _xml_open(tag):
        return "</" + tag[1:]
    if tag.rstrip().endswith("["):
        head = list_tag_head(tag)
        return "]" + (closing_tag(head) if head else "")
    return ""


def balanced_end(text: str, start: int) -> int | None:
    """Index just past the JSON object/array opening at `start`, honouring strings; None if open."""
    depth = 0
    in_str = False
    escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _partial_suffix(text: str, token: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `token`."""
    for size in range(min(len(token) - 1, len(text)), 0, -1):
        if text.endswith(token[:size]):
            return size
    return 0


class ToolCallParser:
    """Split streamed model output into content and tool calls.

    `tag` is the template's tool-call tag (`<tool_call>`, `[TOOL_CALLS] [`, ...) or `{`/None when
    the template has none: then a call is recognised only when the output starts with `{`/`[`.
    With tools given, bare or ```json-fenced JSON at the start of the output is also a call.
    A call is `{"name": ..., "arguments"|"parameters": {...}}` or a JSON array of those; the name
    must be one of the tools' names (the earliest, longest one mentioned wins). A `[` right after
    the tag opens a list whose calls are read one by one (`<tool_call>[{...}, {...}]</tool_call>`,
    SmolLM2's format; a tag `<x>[` is read as `<x>` followed by such a list; an empty list is no
    call). Anything that turns out not to be a call is returned as content, unchanged.
    """

    def __init__(self, tag: str | None, tools: Sequence[Tool]) -> None:
        tag = list_tag_head(tag) or tag
        self.tag = tag if tag and tag != "{" else None
        self.close = closing_tag(tag)
        self.names = sorted({t.function.name for t in tools}, key=len, reverse=True)
        self.index = 0
        self._buf = ""
        self._raw = ""  # text consumed since the current candidate call began (for fallback)
        self._mode = "start"  # start | text | call | after
        self._fenced = False
        self._tagged = False  # the candidate call follows the tag directly (a `[` there opens a list)
        self._in_list = False  # inside a list of calls opened right after the tag

    # -- public ------------------------------------------------------------------------------
    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Flush: whatever is still undecided is content."""
        content, calls = self._run(final=True)
        rest = self._raw + self._buf
        self._raw = self._buf = ""
        return content + rest, calls

    # -- state machine -----------------------------------------------------------------------
    def _run(self, *, final: bool) -> tuple[str, list[ToolCall]]:
        out: list[str] = []
        calls: list[ToolCall] = []
        while True:
            step = {"start": self._start, "text": self._text, "call": self._call, "after": self._after}
            progressed = step[self._mode](out, calls, final)
            if not progressed:
                return "".join(out), calls

    def _start(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        body = self._buf.lstrip(_WS)
        if not body:
            return False
        if self.tag and self.tag.startswith(body[: len(self.tag)]):
            if not body.startswith(self.tag) and not final:
                return False  # maybe the tag, still arriving
            self._mode = "text"
            return True
        if body[0] in "{[" and (self.names or self.tag is None):
            return self._begin(len(self._buf) - len(body), fenced=False)
        if self.names and body.startswith(_FENCE):
            newline = body.find("\n")
            if newline < 0:
                if not final and len(body) < 16:
                    return False
            elif body[3:newline].strip() in ("", "json", "JSON") and body[newline + 1:].lstrip(_WS)[:1] in "{[":
                return self._begin(len(self._buf) - len(body) + newline + 1, fenced=True)
            elif not body[newline + 1:].strip() and not final:
                return False
        elif self.names and _FENCE.startswith(body) and not final:
            return False
        self._mode = "text"
        return True

    def _begin(self, skip: int, *, fenced: bool) -> bool:
        self._raw += self._buf[:skip]
        self._buf = self._buf[skip:]
        self._fenced = fenced
        self._tagged = False
        self._mode = "call"
        return True

    def _text(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        if self.tag is None:
            out.append(self._buf)
            self._buf = ""
            return False
        at = self._buf.find(self.tag)
        if at >= 0:
            out.append(self._buf[:at])
            self._raw = self.tag
            self._buf = self._buf[at + len(self.tag):]
            self._fenced = False
            self._tagged = True
            self._mode = "call"
            return True
        keep = 0 if final else _partial_suffix(self._buf, self.tag)
        out.append(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep:]
        return False

    def _call(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        body = self._buf.lstrip(_WS)
        if not body:
            return False
        if self._tagged and body[0] == "[":
            self._raw += self._buf[: len(self._buf) - len(body) + 1]
            self._buf, self._tagged, self._in_list = body[1:], False, True
            return True
        if self._in_list and body[0] == "]":  # `[]` right after the tag: an empty list, no call
            self._raw, self._buf, self._mode = "", body, "after"
            return True
        if body[0] not in "{[":
            return self._give_up(out)
        end = balanced_end(body, 0)
        if end is None:
            return self._give_up(out) if final else False
        found = self._calls_from(body[:end])
        if found is None:
            return self._give_up(out)
        calls.extend(found)
        self._buf = body[end:]
        self._raw = ""
        self._tagged = False
        self._mode = "after"
        return True

    def _after(self, out: list[str], calls: list[ToolCall], final: bool) -> bool:
        """Between calls: skip separators and closing tags; another call or plain text follows."""
        body = self._buf.lstrip(_WS + ",")
        if self._in_list and body.startswith("]"):
            self._buf, self._in_list = body[1:], False
            return True
        if self.close == "]":
            body = body.lstrip("]" + _WS)
        for token in (self.close, _FENCE if self._fenced else ""):
            if token and body.startswith(token):
                self._buf = body[len(token):]
                self._fenced = self._fenced and token != _FENCE
                self._in_list = self._in_list and token != self.close
                return True
        if not body:
            self._buf = ""
            return False
        if self.tag and body.startswith(self.tag):
            self._raw, self._buf, self._mode = self.tag, body[len(self.tag):], "call"
            self._tagged, self._in_list = True, False
            return True
        if body[0] in "{[":
            self._buf, self._mode = body, "call"
            return True
        candidates = [t for t in (self.tag, self.close, _FENCE if self._fenced else None) if t]
        if not final and any(t.startswith(body) for t in candidates):
            self._buf = body
            return False
        self._buf, self._in_list = body, False
        self._mode = "text"
        return True

    def _give_up(self, out: list[str]) -> bool:
        """Not a tool call after all: everything consumed for it is content."""
        out.append(self._raw + self._buf)
        self._raw = self._buf = ""
        self._tagged = self._in_list = False
        self._mode = "text"
        return False

    # -- JSON to calls -----------------------------------------------------------------------
    def _calls_from(self, text: str) -> list[ToolCall] | None:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested past the interpreter's limit
            return None
        items = data if isinstance(data, list) else [data]
        if not items:
            return None
        calls: list[ToolCall] = []
        for item in items:
            call = self._call_from(item, text)
            if call is None:
                return None
            calls.append(call)
        return calls

    def _call_from(self, item: Any, text: str) -> ToolCall | None:
        if not isinstance(item, dict):
            return None
        fn = item.get("function")
        obj: dict[str, Any] = fn if isinstance(fn, dict) else item
        name = obj.get("name", fn if isinstance(fn, str) else None)
        if self.names and name not in self.names:
            name = self._mentioned_name(json.dumps(item))
        if not isinstance(name, str) or not name:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError):
                return None
        if not isinstance(args, dict):
            return None
        call = ToolCall(id=tool_call_id(), function=ToolCallFunction(index=self.index, name=name, arguments=args))
        self.index += 1
        return call

    def _mentioned_name(self, text: str) -> str | None:
        """The earliest tool name in `text`, the longest one at that position."""
        best: tuple[int, int] | None = None
        found: str | None = None
        for name in self.names:
            at = text.find(name)
            if at >= 0 and (best is None or (at, -len(name)) < best):
                best, found = (at, -len(name)), name
        return found


class ThinkingParser:
    """Split streamed text into (thinking, content) around `open_tag` ... `close_tag`.

    Whitespace before the opening tag and right after either tag is dropped (Ollama's
    thinking.Parser). `opened=True` when the prompt already ended with the opening tag.
    Output that does not start with the opening tag is all content.
    """

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>", *, opened: bool = False) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self._buf = ""
        self._state = "eat_open" if opened else "looking"

    def feed(self, text: str) -> tuple[str, str]:
        self._buf += text
        thinking: list[str] = []
        content: list[str] = []
        while self._step(thinking, content):
            pass
        return "".join(thinking), "".join(content)

    def finish(self) -> tuple[str, str]:
        """Flush anything held back waiting for a tag."""
        rest, self._buf = self._buf, ""
        if self._state in ("thinking", "eat_open"):
            return rest, ""
        if self._state == "looking":
            return "", rest
        return "", rest.lstrip() if self._state == "eat_close" else rest

    @property
    def done(self) -> bool:
        """True once thinking is over (or never started)."""
        return self._state in ("eat_close", "content")

    def _step(self, thinking: list[str], content: list[str]) -> bool:
        buf = self._buf
        trimmed = buf.lstrip()
        if self._state == "looking":
            if trimmed.startswith(self.open_tag):
                self._buf = trimmed[len(self.open_tag):]
                self._state = "eat_open"
                return True
            if not trimmed or self.open_tag.startswith(trimmed):
                return False
            content.append(buf)
            self._buf, self._state = "", "content"
            return False
        if self._state == "eat_open":
            if not trimmed:
                self._buf = ""
                return False
            self._buf, self._state = trimmed, "thinking"
            return True
        if self._state == "thinking":
            at = buf.find(self.close_tag)
            if at >= 0:
                thinking.append(buf[:at])
                self._buf, self._state = buf[at + len(self.close_tag):], "eat_close"
                return True
            keep = _partial_suffix(buf, self.close_tag)
            thinking.append(buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep:]
            return False
        if self._state == "eat_close":
            if not trimmed:
                self._buf = ""
                return False
            self._buf, self._state = trimmed, "content"
            return True
        content.append(buf)
        self._buf = ""
        return False

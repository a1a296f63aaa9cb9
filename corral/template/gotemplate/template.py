"""`GoTemplate`: the public face of the Go text/template interpreter.

Owns: parsing (with the function set Ollama registers), execution, the identifiers a template
uses (Ollama's `Template.Vars`, for capability detection and legacy mode), and the tree edits
Ollama makes: appending `{{ .Response }}` and cutting everything after the first `.Response`
(legacy rendering). Does not own how chat data is built (`corral.template.prompt`).
"""

from __future__ import annotations

import copy
from typing import Any

from corral.template.gotemplate import nodes as n
from corral.template.gotemplate.exec import execute
from corral.template.gotemplate.funcs import FUNC_NAMES
from corral.template.gotemplate.parser import Parsed, parse

__all__ = ["GoTemplate"]


class GoTemplate:
    """A parsed Go template; immutable, safe to share between requests."""

    def __init__(self, text: str, name: str, parsed: Parsed) -> None:
        self.text = text
        self.name = name
        self._parsed = parsed
        self._vars: frozenset[str] | None = None

    @classmethod
    def parse(cls, text: str, name: str = "") -> GoTemplate:
        """Parse `text`; raises TemplateError (HTTP 400) with a Go-style position."""
        text = text.replace("\r\n", "\n")
        return cls(text, name, parse(text, name, FUNC_NAMES))

    @property
    def root(self) -> n.ListNode:
        """The parse tree's root list (read it, do not change it)."""
        return self._parsed.root

    def execute(self, data: Any) -> str:
        """Render with `data` as dot; raises TemplateError when execution fails."""
        return execute(self._parsed, self.name, self.text, data)

    def variables(self) -> frozenset[str]:
        """Lower-cased identifiers in fields and variables (Ollama's `Template.Vars`)."""
        if self._vars is None:
            found: set[str] = set()
            lists = [self._parsed.root, *self._parsed.defines.values()]
            for node in lists:
                _identifiers(node, found)
            self._vars = frozenset(i.lower() for i in found)
        return self._vars

    def references(self, field: str) -> bool:
        """Whether the template uses `field` (e.g. ".Messages", "$.Tools", "Response")."""
        parts = [p for p in field.lstrip("$").split(".") if p]
        return bool(parts) and all(p.lower() in self.variables() for p in parts)

    def with_response(self) -> GoTemplate:
        """A copy with `{{ .Response }}` appended at the end (Ollama's Parse touch-up)."""
        parsed = copy.deepcopy(self._parsed)
        end = len(self.text)
        field = n.FieldNode(end, ["Response"])
        action = n.ActionNode(end, n.PipeNode(end, cmds=[n.CommandNode(end, [field])]))
        parsed.root.nodes.append(action)
        return GoTemplate(self.text, self.name, parsed)

    def cut_after_response(self) -> GoTemplate:
        """A copy without everything after the first `.Response` field (legacy rendering)."""
        parsed = copy.deepcopy(self._parsed)
        state = {"cut": False}
        root = _delete_after_response(parsed.root, state)
        parsed.root = root if isinstance(root, n.ListNode) else n.ListNode(0, [])
        return GoTemplate(self.text, self.name, parsed)


def _identifiers(node: object, found: set[str]) -> None:
    if isinstance(node, n.ListNode):
        for child in node.nodes:
            _identifiers(child, found)
    elif isinstance(node, (n.ActionNode, n.TemplateNode)):
        if node.pipe is not None:
            _identifiers(node.pipe, found)
    elif isinstance(node, (n.IfNode, n.WithNode, n.RangeNode)):
        _identifiers(node.pipe, found)
        _identifiers(node.body, found)
        if node.else_body is not None:
            _identifiers(node.else_body, found)
    elif isinstance(node, n.PipeNode):
        for cmd in node.cmds:
            for arg in cmd.args:
                _identifiers(arg, found)
    elif isinstance(node, (n.FieldNode, n.VariableNode)):
        found.update(node.idents)


def _delete_after_response(node: Any, state: dict[str, bool]) -> Any:
    """Ollama's deleteNode: keep nodes up to and including the first `.Response` field."""
    if isinstance(node, n.FieldNode) and "Response" in node.idents:
        state["cut"] = True
        return node
    if state["cut"]:
        return None
    if isinstance(node, n.ListNode):
        kept = (_delete_after_response(c, state) for c in node.nodes)
        node.nodes = [c for c in kept if c is not None]
        return node
    if isinstance(node, (n.IfNode, n.WithNode, n.RangeNode)):
        node.body = _delete_after_response(node.body, state) or n.ListNode(node.body.offset)
        if node.else_body is not None:
            node.else_body = _delete_after_response(node.else_body, state)
        return node
    if isinstance(node, n.ActionNode):
        pipe = _delete_after_response(node.pipe, state)
        if pipe is None:
            return None
        node.pipe = pipe
        return node
    if isinstance(node, n.PipeNode):
        commands = []
        for cmd in node.cmds:
            args = [a for a in (_delete_after_response(a, state) for a in cmd.args) if a is not None]
            if not args:
                return None
            cmd.args = args
            commands.append(cmd)
        if not commands:
            return None
        node.cmds = commands
    return node

"""Executor of parsed Go templates: walks the tree with data and writes the output text.

Owns: Go's execution rules for actions, `if`/`with`/`range` (lists, maps in sorted key order,
integers, `else`, `break`/`continue`), variable scoping and assignment, pipelines (the previous
command's value becomes the last argument), short-circuit `and`/`or` that return an operand,
`template` calls, and execution errors with positions. Does not own parsing, value semantics
(`values`) or the function library (`funcs`).
"""

from __future__ import annotations

from typing import Any

from corral.template.gotemplate.errors import TemplateError, position
from corral.template.gotemplate.funcs import FUNCS
from corral.template.gotemplate.nodes import (
    ActionNode,
    BoolNode,
    BreakNode,
    ChainNode,
    CommandNode,
    ContinueNode,
    DotNode,
    FieldNode,
    IdentifierNode,
    IfNode,
    ListNode,
    NilNode,
    Node,
    NumberNode,
    Operand,
    PipeNode,
    RangeNode,
    StringNode,
    TemplateNode,
    TextNode,
    VariableNode,
    WithNode,
)
from corral.template.gotemplate.parser import Parsed
from corral.template.gotemplate.values import MISSING, ValueError_, get_field, is_true, sprint

__all__ = ["execute"]

_NO_FINAL = object()
_MAX_DEPTH = 100_000


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Exec:
    def __init__(self, parsed: Parsed, name: str, text: str) -> None:
        self.parsed = parsed
        self.name = name
        self.text = text
        self.out: list[str] = []
        self.vars: list[list[Any]] = []
        self.depth = 0
        self.steps = 0

    def error(self, offset: int, node: object, message: str) -> TemplateError:
        line, col = position(self.text, offset)
        where = f"{self.name}:{line}:{col}"
        return TemplateError(f'template: {where}: executing "{self.name}" at <{node}>: {message}')

    # -- variables -------------------------------------------------------------------------
    def lookup(self, name: str) -> Any:
        for var in reversed(self.vars):
            if var[0] == name:
                return var[1]
        raise ValueError_(f"undefined variable: {name}")

    def assign(self, name: str, value: Any) -> None:
        for var in reversed(self.vars):
            if var[0] == name:
                var[1] = value
                return
        raise ValueError_(f"undefined variable: {name}")

    # -- statements --------------------------------------------------------------------------
    def walk(self, dot: Any, node: Node) -> None:
        self.steps += 1
        if isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ListNode):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, ActionNode):
            value = self.pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.out.append(sprint(value))
        elif isinstance(node, (IfNode, WithNode)):
            self.if_or_with(dot, node)
        elif isinstance(node, RangeNode):
            self.range(dot, node)
        elif isinstance(node, TemplateNode):
            self.template(dot, node)
        elif isinstance(node, BreakNode):
            raise _Break
        elif isinstance(node, ContinueNode):
            raise _Continue

    def if_or_with(self, dot: Any, node: IfNode | WithNode) -> None:
        mark = len(self.vars)
        try:
            value = self.pipeline(dot, node.pipe)
            if is_true(value):
                self.walk(value if isinstance(node, WithNode) else dot, node.body)
            elif node.else_body is not None:
                self.walk(dot, node.else_body)
        finally:
            del self.vars[mark:]

    def range(self, dot: Any, node: RangeNode) -> None:
        mark = len(self.vars)
        try:
            value = self.pipeline(dot, node.pipe, declare=False)
            items = self.range_items(node, value)
            if node.pipe.decl and not node.pipe.is_assign:
                self.vars.extend([v.idents[0], MISSING] for v in node.pipe.decl)
            for key, elem in items:
                if self.one_iteration(node, key, elem):
                    break
            else:
                if not items and node.else_body is not None:
                    self.walk(dot, node.else_body)
        finally:
            del self.vars[mark:]

    def range_items(self, node: RangeNode, value: Any) -> list[tuple[Any, Any]]:
        if isinstance(value, (list, tuple)):
            return list(enumerate(value))
        if isinstance(value, dict):
            return [(k, value[k]) for k in sorted(value, key=_key_order)]
        if isinstance(value, int) and not isinstance(value, bool):
            if len(node.pipe.decl) > 1:
                raise self.error(
                    node.offset, node.pipe, "can't use int to iterate over more than one variable"
                )
            return [(i, i) for i in range(value)]
        if value is MISSING or value is None:
            return []
        raise self.error(node.offset, node.pipe, f"range can't iterate over {sprint(value)}")

    def one_iteration(self, node: RangeNode, key: Any, elem: Any) -> bool:
        decl = node.pipe.decl
        setter = self.assign if node.pipe.is_assign else self.set_top
        if len(decl) == 1:
            setter(decl[0].idents[0], elem)
        elif len(decl) == 2:
            setter(decl[0].idents[0], key)
            setter(decl[1].idents[0], elem)
        mark = len(self.vars)
        try:
            self.walk(elem, node.body)
        except _Continue:
            pass
        except _Break:
            return True
        finally:
            del self.vars[mark:]
        return False

    def set_top(self, name: str, value: Any) -> None:
        self.assign(name, value)

    def template(self, dot: Any, node: TemplateNode) -> None:
        body = self.parsed.defines.get(node.name)
        if body is None:
            raise self.error(node.offset, f'template "{node.name}"', f'no such template "{node.name}"')
        value = self.pipeline(dot, node.pipe) if node.pipe is not None else None
        self.depth += 1
        if self.depth > 1000:
            raise self.error(node.offset, f'template "{node.name}"', "exceeded maximum template depth (1000)")
        saved, self.vars = self.vars, [["$", value]]
        try:
            self.walk(value, body)
        finally:
            self.vars = saved
            self.depth -= 1

    # -- expressions ---------------------------------------------------------------------------
    def pipeline(self, dot: Any, pipe: PipeNode, *, declare: bool = True) -> Any:
        value: Any = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        if declare:
            for var in pipe.decl:
                if pipe.is_assign:
                    self.guard(var, lambda v=var: self.assign(v.idents[0], value))
                else:
                    self.vars.append([var.idents[0], value])
        return value

    def guard(self, node: Operand | CommandNode, fn: Any) -> Any:
        try:
            return fn()
        except ValueError_ as exc:
            raise self.error(node.offset, node, str(exc)) from None

    def command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, IdentifierNode):
            return self.call(dot, first, cmd, final)
        if len(cmd.args) > 1 or final is not _NO_FINAL:
            if isinstance(first, (FieldNode, ChainNode, VariableNode)):
                name = str(first).rsplit(".", 1)[-1]
                raise self.error(first.offset, first, f"can't give argument to non-function {name}")
            raise self.error(first.offset, first, f"can't give argument to non-function {first}")
        if isinstance(first, NilNode):
            raise self.error(first.offset, first, "nil is not a command")
        return self.arg(dot, first)

    def arg(self, dot: Any, node: Operand) -> Any:
        if isinstance(node, DotNode):
            return dot
        if isinstance(node, FieldNode):
            return self.fields(node, dot, node.idents)
        if isinstance(node, VariableNode):
            value = self.guard(node, lambda: self.lookup(node.idents[0]))
            return self.fields(node, value, node.idents[1:])
        if isinstance(node, ChainNode):
            return self.fields(node, self.arg(dot, node.node), node.fields)
        if isinstance(node, PipeNode):
            mark = len(self.vars)
            try:
                return self.pipeline(dot, node)
            finally:
                del self.vars[mark:]
        if isinstance(node, IdentifierNode):
            return self.call(dot, node, CommandNode(node.offset, [node]), _NO_FINAL)
        if isinstance(node, (StringNode, NumberNode, BoolNode)):
            return node.value
        if isinstance(node, NilNode):
            return None
        raise self.error(0, node, "can't handle node")

    def fields(self, node: Operand, value: Any, names: list[str]) -> Any:
        for name in names:
            value = self.guard(node, lambda v=value, n=name: get_field(v, n))
        return value

    def call(self, dot: Any, ident: IdentifierNode, cmd: CommandNode, final: Any) -> Any:
        name = ident.name
        arg_nodes = cmd.args[1:] if cmd.args and cmd.args[0] is ident else []
        if name in ("and", "or"):
            return self.and_or(dot, ident, arg_nodes, final)
        fn = FUNCS.get(name)
        if fn is None:
            raise self.error(ident.offset, ident, f'"{name}" is not a defined function')
        args = [self.arg(dot, a) for a in arg_nodes]
        if final is not _NO_FINAL:
            args.append(final)
        try:
            return fn(*args)
        except ValueError_ as exc:
            raise self.error(ident.offset, cmd, f"error calling {name}: {exc}") from None
        except TypeError:
            raise self.error(ident.offset, cmd, f"wrong number of args for {name}: got {len(args)}") from None

    def and_or(self, dot: Any, ident: IdentifierNode, arg_nodes: list[Operand], final: Any) -> Any:
        count = len(arg_nodes) + (final is not _NO_FINAL)
        if count == 0:
            raise self.error(
                ident.offset, ident, f"wrong number of args for {ident.name}: want at least 1 got 0"
            )
        want = ident.name == "or"
        value: Any = MISSING
        for node in arg_nodes:
            value = self.arg(dot, node)
            if is_true(value) == want:
                return value
        return final if final is not _NO_FINAL else value


def _key_order(key: Any) -> tuple[int, Any]:
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return (0, key)
    return (1, str(key))


def execute(parsed: Parsed, name: str, text: str, data: Any) -> str:
    """Run `parsed` with `data` as dot and `$`; raises TemplateError on failure."""
    runner = _Exec(parsed, name, text)
    runner.vars.append(["$", data])
    try:
        runner.walk(data, parsed.root)
    except RecursionError:
        raise TemplateError(f"template: {name}: template nesting is too deep") from None
    except (_Break, _Continue):  # pragma: no cover - the parser rejects these outside range
        raise TemplateError(f"template: {name}: break or continue outside range") from None
    return "".join(runner.out)

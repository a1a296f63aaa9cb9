"""Parse-tree node types of the Go template interpreter.

Owns: the immutable node classes the parser builds and the executor walks, mirroring
`text/template/parse` (List, Text, Action, If, Range, With, Template, Break, Continue, Pipe,
Command and the operand nodes). Does not own parsing or evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ActionNode",
    "BoolNode",
    "BreakNode",
    "ChainNode",
    "CommandNode",
    "ContinueNode",
    "DotNode",
    "FieldNode",
    "IdentifierNode",
    "IfNode",
    "ListNode",
    "NilNode",
    "Node",
    "NumberNode",
    "Operand",
    "PipeNode",
    "RangeNode",
    "StringNode",
    "TemplateNode",
    "TextNode",
    "VariableNode",
    "WithNode",
]


@dataclass
class TextNode:
    offset: int
    text: str


@dataclass
class FieldNode:
    offset: int
    idents: list[str]

    def __str__(self) -> str:
        return "".join("." + i for i in self.idents)


@dataclass
class VariableNode:
    offset: int
    idents: list[str]  # first is the variable name including "$"

    def __str__(self) -> str:
        return ".".join(self.idents)


@dataclass
class DotNode:
    offset: int

    def __str__(self) -> str:
        return "."


@dataclass
class NilNode:
    offset: int

    def __str__(self) -> str:
        return "nil"


@dataclass
class BoolNode:
    offset: int
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass
class NumberNode:
    offset: int
    text: str
    value: int | float

    def __str__(self) -> str:
        return self.text


@dataclass
class StringNode:
    offset: int
    quoted: str
    value: str

    def __str__(self) -> str:
        return self.quoted


@dataclass
class IdentifierNode:
    offset: int
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass
class ChainNode:
    offset: int
    node: Operand
    fields: list[str]

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, PipeNode) else str(self.node)
        return inner + "".join("." + f for f in self.fields)


@dataclass
class CommandNode:
    offset: int
    args: list[Operand] = field(default_factory=list)

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, PipeNode) else str(a) for a in self.args)


@dataclass
class PipeNode:
    offset: int
    decl: list[VariableNode] = field(default_factory=list)
    is_assign: bool = False
    cmds: list[CommandNode] = field(default_factory=list)

    def __str__(self) -> str:
        text = " | ".join(str(c) for c in self.cmds)
        if self.decl:
            names = ", ".join(str(v) for v in self.decl)
            return f"{names} {'=' if self.is_assign else ':='} {text}"
        return text


Operand = (
    FieldNode
    | VariableNode
    | DotNode
    | NilNode
    | BoolNode
    | NumberNode
    | StringNode
    | IdentifierNode
    | ChainNode
    | PipeNode
)


@dataclass
class ListNode:
    offset: int
    nodes: list[Node] = field(default_factory=list)


@dataclass
class ActionNode:
    offset: int
    pipe: PipeNode


@dataclass
class IfNode:
    offset: int
    pipe: PipeNode
    body: ListNode
    else_body: ListNode | None


@dataclass
class WithNode:
    offset: int
    pipe: PipeNode
    body: ListNode
    else_body: ListNode | None


@dataclass
class RangeNode:
    offset: int
    pipe: PipeNode
    body: ListNode
    else_body: ListNode | None


@dataclass
class TemplateNode:
    offset: int
    name: str
    pipe: PipeNode | None


@dataclass
class BreakNode:
    offset: int


@dataclass
class ContinueNode:
    offset: int


Node = (
    TextNode | ActionNode | IfNode | WithNode | RangeNode | TemplateNode | BreakNode | ContinueNode | ListNode
)

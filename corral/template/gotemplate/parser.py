"""Parser for the Go text/template subset: tokens in, a parse tree plus named templates out.

Owns: the grammar of actions (`if`/`else if`/`else`, `range` with one or two variables and
`else`, `with`/`else with`, `end`, `define`/`template`/`block`, `break`/`continue`), pipelines
with declarations (`$x :=`) and assignments (`$x =`), commands, operands and field chains,
and Go's parse-time checks (undefined variables and functions, misplaced `{{end}}`/`{{else}}`).
Does not own lexing (`lexer`) or evaluation (`exec`).
"""

from __future__ import annotations

from collections.abc import Collection

from corral.template.gotemplate.errors import TemplateError, template_error
from corral.template.gotemplate.lexer import Kind, Token, lex, parse_number
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

__all__ = ["Parsed", "parse"]

_LITERALS = (BoolNode, DotNode, NilNode, NumberNode, StringNode)


class Parsed:
    """A parsed template: its root list and the templates it defines by name."""

    def __init__(self, root: ListNode, defines: dict[str, ListNode]) -> None:
        self.root = root
        self.defines = defines


class _Terminator:
    """How a list ended: at EOF, `{{end}}` or `{{else ...}}` (with what follows `else`)."""

    def __init__(self, kind: str, token: Token, chained: str | None = None) -> None:
        self.kind = kind
        self.token = token
        self.chained = chained  # "if" / "with" for `else if` / `else with`


class _Parser:
    def __init__(self, text: str, name: str, funcs: Collection[str]) -> None:
        self.text = text
        self.name = name
        self.funcs = funcs
        self.tokens = lex(text, name)
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.defines: dict[str, ListNode] = {}

    # -- token helpers -------------------------------------------------------------------
    def error(self, token: Token | int, message: str) -> TemplateError:
        offset = token if isinstance(token, int) else token.offset
        return template_error(self.name, self.text, offset, message)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        token = self.tokens[self.i]
        if token.kind is not Kind.EOF:
            self.i += 1
        return token

    def next_non_space(self) -> Token:
        token = self.next()
        while token.kind is Kind.SPACE:
            token = self.next()
        return token

    def peek_non_space(self) -> Token:
        j = self.i
        while self.tokens[j].kind is Kind.SPACE:
            j += 1
        return self.tokens[j]

    def expect(self, kind: Kind, context: str) -> Token:
        token = self.next_non_space()
        if token.kind is not kind:
            raise self.error(token, f"unexpected {token.describe()} in {context}")
        return token

    # -- lists and actions ---------------------------------------------------------------
    def parse_list(self, offset: int) -> tuple[ListNode, _Terminator]:
        nodes: list[Node] = []
        while True:
            token = self.next()
            if token.kind is Kind.EOF:
                return ListNode(offset, nodes), _Terminator("eof", token)
            if token.kind is Kind.TEXT:
                nodes.append(TextNode(token.offset, token.value))
                continue
            keyword = self.peek_non_space()
            if keyword.kind is Kind.KEYWORD and keyword.value in ("end", "else"):
                self.next_non_space()
                return ListNode(offset, nodes), self.terminator(keyword)
            node = self.action(token, keyword)
            if node is not None:
                nodes.append(node)

    def terminator(self, keyword: Token) -> _Terminator:
        if keyword.value == "end":
            self.expect(Kind.RIGHT, "end")
            return _Terminator("end", keyword)
        following = self.peek_non_space()
        if following.kind is Kind.KEYWORD and following.value in ("if", "with"):
            self.next_non_space()
            return _Terminator("else", keyword, following.value)
        self.expect(Kind.RIGHT, "else")
        return _Terminator("else", keyword)

    def action(self, left: Token, keyword: Token) -> Node | None:
        if keyword.kind is Kind.KEYWORD and keyword.value != "nil":
            self.next_non_space()
            value = keyword.value
            if value in ("if", "with", "range"):
                return self.control(value, keyword)
            if value in ("break", "continue"):
                if self.range_depth == 0:
                    raise self.error(keyword, f"{{{{{value}}}}} outside {{{{range}}}}")
                self.expect(Kind.RIGHT, value)
                return BreakNode(keyword.offset) if value == "break" else ContinueNode(keyword.offset)
            if value == "template":
                return self.template_call(keyword)
            if value in ("define", "block"):
                return self.define(keyword, value == "block")
        pipe = self.pipeline("command", left.offset, Kind.RIGHT)
        return ActionNode(left.offset, pipe)

    def control(self, kind: str, keyword: Token) -> Node:
        mark = len(self.vars)
        pipe = self.pipeline(kind, keyword.offset, Kind.RIGHT)
        if kind == "range":
            self.range_depth += 1
        body, term = self.parse_list(keyword.offset)
        if kind == "range":
            self.range_depth -= 1
        else_body: ListNode | None = None
        if term.kind == "eof":
            raise self.error(term.token, "unexpected EOF")
        if term.kind == "else":
            if term.chained is not None:
                if term.chained != kind or kind == "range":
                    raise self.error(term.token, f"unexpected {{{{else {term.chained}}}}}")
                nested = self.control(kind, term.token)
                else_body = ListNode(term.token.offset, [nested])
            else:
                else_body, end = self.parse_list(term.token.offset)
                if end.kind != "end":
                    what = "EOF" if end.kind == "eof" else "{{else}}"
                    raise self.error(end.token, f"expected end; found {what}")
        del self.vars[mark:]
        if kind == "if":
            return IfNode(keyword.offset, pipe, body, else_body)
        if kind == "with":
            return WithNode(keyword.offset, pipe, body, else_body)
        return RangeNode(keyword.offset, pipe, body, else_body)

    def template_call(self, keyword: Token) -> TemplateNode:
        name = self.next_non_space()
        if name.kind is not Kind.STRING:
            raise self.error(name, f"unexpected {name.describe()} in template clause")
        pipe: PipeNode | None = None
        if self.peek_non_space().kind is not Kind.RIGHT:
            pipe = self.pipeline("template", keyword.offset, Kind.RIGHT)
        else:
            self.next_non_space()
        return TemplateNode(keyword.offset, name.value, pipe)

    def define(self, keyword: Token, is_block: bool) -> Node | None:
        name = self.next_non_space()
        if name.kind is not Kind.STRING:
            raise self.error(name, f"unexpected {name.describe()} in {keyword.value} clause")
        pipe: PipeNode | None = None
        if is_block:
            pipe = self.pipeline("block", keyword.offset, Kind.RIGHT)
        else:
            self.expect(Kind.RIGHT, "define clause")
        saved_vars, self.vars = self.vars, ["$"]
        body, term = self.parse_list(keyword.offset)
        self.vars = saved_vars
        if term.kind != "end":
            raise self.error(term.token, f"unexpected {term.token.describe()} in {keyword.value}")
        self.defines[name.value] = body
        return TemplateNode(keyword.offset, name.value, pipe) if is_block else None

    # -- pipelines -------------------------------------------------------------------------
    def pipeline(self, context: str, offset: int, end: Kind) -> PipeNode:
        pipe = PipeNode(offset)
        self.declarations(pipe, context)
        while True:
            token = self.peek_non_space()
            if token.kind is end:
                self.next_non_space()
                break
            if token.kind in (Kind.RIGHT, Kind.RPAREN, Kind.EOF):
                raise self.error(token, f"unexpected {token.describe()} in operand")
            pipe.cmds.append(self.command(end))
        if not pipe.cmds:
            raise self.error(offset, f"missing value for {context}")
        for stage, cmd in enumerate(pipe.cmds[1:], start=2):
            if isinstance(cmd.args[0], _LITERALS):
                raise self.error(cmd.offset, f"non executable command in pipeline stage {stage}")
        return pipe

    def declarations(self, pipe: PipeNode, context: str) -> None:
        start = self.i
        first = self.next_non_space()
        if first.kind is not Kind.VARIABLE:
            self.i = start
            return
        names = [first]
        op = self.next_non_space()
        if op.kind is Kind.COMMA and context == "range":
            second = self.next_non_space()
            if second.kind is not Kind.VARIABLE:
                raise self.error(second, "range can only initialize variables")
            names.append(second)
            op = self.next_non_space()
            if op.kind is Kind.COMMA:
                raise self.error(op, "too many declarations in range")
        if op.kind not in (Kind.DECLARE, Kind.ASSIGN):
            self.i = start
            return
        pipe.is_assign = op.kind is Kind.ASSIGN
        for token in names:
            if pipe.is_assign and token.value not in self.vars:
                raise self.error(token, f'undefined variable "{token.value}"')
            pipe.decl.append(VariableNode(token.offset, [token.value]))
        if not pipe.is_assign:
            self.vars.extend(t.value for t in names)

    def command(self, end: Kind) -> CommandNode:
        cmd = CommandNode(self.peek_non_space().offset)
        while True:
            self.skip_spaces()
            operand = self.operand()
            if operand is None:
                token = self.peek()
                raise self.error(token, f"unexpected {token.describe()} in operand")
            cmd.args.append(operand)
            token = self.peek()
            if token.kind is Kind.SPACE:
                self.skip_spaces()
                token = self.peek()
                if token.kind in (end, Kind.PIPE, Kind.RIGHT, Kind.RPAREN):
                    pass
                else:
                    continue
            if token.kind is Kind.PIPE:
                self.next()
                if self.peek_non_space().kind in (end, Kind.RIGHT, Kind.RPAREN):
                    raise self.error(token, "missing command after pipe")
                return cmd
            if token.kind in (end, Kind.RIGHT, Kind.RPAREN):
                return cmd
            raise self.error(token, f"unexpected {token.describe()} in operand")

    def skip_spaces(self) -> None:
        while self.peek().kind is Kind.SPACE:
            self.next()

    def operand(self) -> Operand | None:
        term = self.term()
        if term is None or self.peek().kind is not Kind.FIELD:
            return term
        fields: list[str] = []
        while self.peek().kind is Kind.FIELD:
            fields.append(self.next().value[1:])
        if isinstance(term, FieldNode):
            return FieldNode(term.offset, term.idents + fields)
        if isinstance(term, VariableNode):
            return VariableNode(term.offset, term.idents + fields)
        if isinstance(term, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
            raise self.error(term.offset, f"unexpected . after term {str(term)!r}".replace("'", '"'))
        return ChainNode(term.offset, term, fields)

    def term(self) -> Operand | None:
        token = self.peek()
        kind = token.kind
        if kind is Kind.IDENT:
            self.next()
            if token.value not in self.funcs:
                raise self.error(token, f'function "{token.value}" not defined')
            return IdentifierNode(token.offset, token.value)
        if kind is Kind.DOT:
            self.next()
            return DotNode(token.offset)
        if kind is Kind.KEYWORD and token.value == "nil":
            self.next()
            return NilNode(token.offset)
        if kind is Kind.VARIABLE:
            self.next()
            if token.value not in self.vars:
                raise self.error(token, f'undefined variable "{token.value}"')
            return VariableNode(token.offset, [token.value])
        if kind is Kind.FIELD:
            self.next()
            return FieldNode(token.offset, [token.value[1:]])
        if kind is Kind.BOOL:
            self.next()
            return BoolNode(token.offset, token.value == "true")
        if kind in (Kind.NUMBER, Kind.CHAR):
            self.next()
            value = parse_number(token.value)
            assert value is not None
            return NumberNode(token.offset, self.text[token.offset : self.peek().offset], value)
        if kind is Kind.STRING:
            self.next()
            return StringNode(token.offset, self.text[token.offset : self.peek().offset], token.value)
        if kind is Kind.LPAREN:
            self.next()
            return self.pipeline("parenthesized pipeline", token.offset, Kind.RPAREN)
        return None


def parse(text: str, name: str, funcs: Collection[str]) -> Parsed:
    """Parse `text`; `funcs` are the function names the template may call."""
    parser = _Parser(text, name, funcs)
    root, term = parser.parse_list(0)
    if term.kind != "eof":
        raise parser.error(term.token, f"unexpected {{{{{term.kind}}}}}")
    return Parsed(root, parser.defines)

"""Chat messages and tools as the Go values Ollama's templates see.

Owns: converting `corral.schemas.native` Message/Tool models into Go-shaped template data
(`api.Message`, `api.ToolCall`, `api.Tool` with Go field names, `String()` methods that print
JSON, `PropertyType` printing a single type bare) and Ollama's `collate` (system messages joined
with blank lines; consecutive same-role non-tool messages merged). Does not own rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.schemas.native import Message, Tool, ToolCall
from corral.template.gotemplate.values import GoStruct, OrderedJSON, go_json, sprint_value

__all__ = ["GoList", "collate", "message_value", "tools_value"]


class GoList(list[Any]):
    """A Go slice whose String() method prints its JSON (api.Tools)."""

    def go_string(self) -> str:
        return go_json(self.go_json())

    def go_json(self) -> Any:
        return list(self) if self else None


class PropertyType(list[str]):
    """api.PropertyType: one JSON-schema type prints bare, several print as a Go slice."""

    def go_string(self) -> str:
        if not self:
            return ""
        if len(self) == 1:
            return self[0]
        return sprint_value(list(self))

    def go_json(self) -> Any:
        return self[0] if len(self) == 1 else list(self)


class Arguments(dict[str, Any]):
    """api.ToolCallFunctionArguments: a map whose String() prints compact JSON."""

    def go_string(self) -> str:
        return go_json(dict(self))


def _json_struct(type_name: str, fields: dict[str, Any], encoded: OrderedJSON) -> GoStruct:
    return GoStruct(type_name, fields, string=go_json(encoded), json_value=encoded)


def _property(schema: Any) -> GoStruct:
    schema = schema if isinstance(schema, dict) else {}
    raw_type = schema.get("type")
    types = PropertyType([raw_type] if isinstance(raw_type, str) else list(raw_type or []))
    items = schema.get("items")
    description = str(schema.get("description") or "")
    enum = schema.get("enum")
    fields = {"Type": types, "Items": items, "Description": description, "Enum": enum}
    encoded = OrderedJSON()
    if types:
        encoded["type"] = types
    if items is not None:
        encoded["items"] = items
    if description:
        encoded["description"] = description
    if enum:
        encoded["enum"] = enum
    return _json_struct("api.ToolProperty", fields, encoded)


def _parameters(schema: dict[str, Any]) -> GoStruct:
    properties = schema.get("properties")
    props = {name: _property(p) for name, p in properties.items()} if isinstance(properties, dict) else {}
    required = schema.get("required")
    fields = {
        "Type": str(schema.get("type") or ""),
        "Defs": schema.get("$defs"),
        "Items": schema.get("items"),
        "Required": list(required) if isinstance(required, list) else [],
        "Properties": props,
    }
    encoded = OrderedJSON(type=fields["Type"])
    if fields["Defs"] is not None:
        encoded["$defs"] = fields["Defs"]
    if fields["Items"] is not None:
        encoded["items"] = fields["Items"]
    encoded["required"] = fields["Required"] or None
    encoded["properties"] = props if isinstance(properties, dict) else None
    return _json_struct("api.ToolFunctionParameters", fields, encoded)


def tool_value(tool: Tool) -> GoStruct:
    """One api.Tool: `.Type`, `.Function.Name/.Description/.Parameters...`; prints as JSON."""
    params = _parameters(tool.function.parameters or {})
    description = tool.function.description or ""
    func_fields = {"Name": tool.function.name, "Description": description, "Parameters": params}
    func_json = OrderedJSON(name=tool.function.name, description=description, parameters=params)
    function = _json_struct("api.ToolFunction", func_fields, func_json)
    return _json_struct(
        "api.Tool",
        {"Type": tool.type, "Items": None, "Function": function},
        OrderedJSON(type=tool.type, function=function),
    )


def tools_value(tools: Sequence[Tool] | None) -> GoList:
    """api.Tools for `.Tools` (empty prints as `null`, like a nil slice)."""
    return GoList(tool_value(t) for t in tools or [])


def _tool_call(call: ToolCall) -> GoStruct:
    fn = call.function
    arguments = Arguments(fn.arguments or {})
    func_json = OrderedJSON()
    if fn.index:
        func_json["index"] = fn.index
    func_json.update(name=fn.name, arguments=arguments)
    function = _json_struct(
        "api.ToolCallFunction",
        {"Index": fn.index or 0, "Name": fn.name, "Arguments": arguments},
        func_json,
    )
    call_json = OrderedJSON()
    if call.id:
        call_json["id"] = call.id
    call_json["function"] = function
    return _json_struct("api.ToolCall", {"ID": call.id or "", "Function": function}, call_json)


def message_value(msg: Message, content: str | None = None) -> GoStruct:
    """One api.Message with Go field names (`content` overrides the message's content)."""
    text = msg.content if content is None else content
    calls = [_tool_call(c) for c in msg.tool_calls or []]
    fields = {
        "Role": msg.role,
        "Content": text,
        "Thinking": msg.thinking or "",
        "Images": list(msg.images or []),
        "ToolCalls": calls,
        "ToolName": msg.tool_name or "",
        "ToolCallID": msg.tool_call_id or "",
    }
    encoded = OrderedJSON(role=msg.role, content=text)
    optional = {
        "thinking": msg.thinking,
        "images": msg.images,
        "tool_calls": calls,
        "tool_name": msg.tool_name,
        "tool_call_id": msg.tool_call_id,
    }
    encoded.update({k: v for k, v in optional.items() if v})
    return GoStruct("api.Message", fields, json_value=encoded)


def collate(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    """Ollama's collate: (all system contents joined by blank lines, merged message list)."""
    system: list[str] = []
    runs: list[list[Message]] = []  # consecutive same-role messages, joined once (linear, not quadratic)
    for msg in messages:
        if msg.role == "system":
            system.append(msg.content)
        if runs and runs[-1][0].role == msg.role and msg.role != "tool":
            runs[-1].append(msg)
        else:
            runs.append([msg])
    merged = [run[0] if len(run) == 1 else
              run[0].model_copy(update={"content": "\n\n".join(m.content for m in run)}) for run in runs]
    return "\n\n".join(system), merged

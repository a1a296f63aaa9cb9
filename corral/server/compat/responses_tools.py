"""Responses API tool declarations -> native function tools, and calls back to the client's names.

The Responses API has more tool shapes than chat's `function`:
- `namespace` groups (`{"type": "namespace", "name": "mcp__srv", "tools": [function...]}`, how
  Codex declares every MCP server): client-run functions under a prefix. The model sees each as an
  ordinary function named `<namespace>__<name>`; a call to it goes back as a `function_call` item
  with separate `namespace` and `name` fields (what the Responses API defines and Codex routes on).
  The namespace `functions` is the default one: its members keep their bare names.
- `custom` tools (freeform text input): a function with one string argument `input`; a call goes
  back as a `custom_tool_call` item.
- hosted tools that OpenAI's servers run (`web_search`, `file_search`, `code_interpreter`, ...):
  corral cannot run them, so they are left out of the prompt; the route logs that and reports them in
  the response's `metadata` (`corral_ignored_tools`) instead of failing the whole request.
Any other type is a 400. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.errors import BadRequestError

HOSTED_TOOL_TYPES = frozenset({
    "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
    "file_search", "code_interpreter", "computer_use_preview", "computer_use", "computer",
    "image_generation", "mcp", "local_shell", "shell", "tool_search", "apply_patch",
})
DEFAULT_NAMESPACE = "functions"
IGNORED_TOOLS_KEY = "corral_ignored_tools"


@dataclass(frozen=True)
class Route:
    """Where a flat function name the model calls came from."""

    name: str
    namespace: str | None = None
    kind: str = "function"  # or "custom"


@dataclass
class ToolPlan:
    native: list[dict[str, Any]] = field(default_factory=list)
    routes: dict[str, Route] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def route(self, flat: str) -> Route:
        return self.routes.get(flat) or Route(flat)


def flat_name(namespace: str | None, name: str) -> str:
    """The single function name the model sees for `name` inside `namespace`."""
    if not namespace or namespace == DEFAULT_NAMESPACE:
        return name
    return f"{namespace}{name}" if namespace.endswith("__") else f"{namespace}__{name}"


def _function(name: str, description: Any, parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": parameters or {"type": "object", "properties": {}}}}


def _custom(name: str, tool: dict[str, Any]) -> dict[str, Any]:
    desc = tool.get("description") or ""
    fmt = tool.get("format") or {}
    if fmt.get("type") == "grammar" and fmt.get("definition"):
        desc += f"\nThe input follows this {fmt.get('syntax', '')} grammar:\n{fmt['definition']}"
    params = {"type": "object", "properties": {"input": {"type": "string", "description": "the tool's input text"}},
              "required": ["input"]}
    return _function(name, desc.strip() or None, params)


def _add(plan: ToolPlan, tool: dict[str, Any], namespace: str | None) -> None:
    kind = tool.get("type")
    name = str(tool.get("name") or "")
    if kind in ("function", "custom"):
        if not name:
            raise BadRequestError(f"a {kind} tool needs a name")
        flat = flat_name(namespace, name)
        plan.native.append(_custom(flat, tool) if kind == "custom"
                           else _function(flat, tool.get("description"), tool.get("parameters")))
        ns = namespace if namespace and namespace != DEFAULT_NAMESPACE else None
        plan.routes[flat] = Route(name, ns, str(kind))
    elif kind == "namespace" and namespace is None:
        if not name:
            raise BadRequestError("a namespace tool needs a name")
        for member in tool.get("tools") or []:
            if not isinstance(member, dict):
                raise BadRequestError(f"namespace '{name}': tools must be objects")
            _add(plan, member, name)
    elif kind in HOSTED_TOOL_TYPES:
        plan.ignored.append(str(kind))
    else:
        where = f" (in namespace '{namespace}')" if namespace else ""
        raise BadRequestError(f"tool type '{kind}'{where} is not supported")


def plan_tools(tools: list[dict[str, Any]] | None) -> ToolPlan:
    """Translate the request's `tools`; raises BadRequestError for an unknown tool type."""
    plan = ToolPlan()
    for tool in tools or []:
        if not isinstance(tool, dict):
            raise BadRequestError("tools must be objects")
        _add(plan, tool, None)
    return plan


def call_item(route: Route, call_id: str, arguments: Any, item_id: str) -> dict[str, Any]:
    """The output item for a call the model made (arguments: the parsed JSON object)."""
    if route.kind == "custom":
        text = arguments.get("input", "") if isinstance(arguments, dict) else arguments
        return {"id": item_id, "type": "custom_tool_call", "status": "completed", "call_id": call_id,
                "name": route.name, "input": text if isinstance(text, str) else str(text)}
    item: dict[str, Any] = {"id": item_id, "type": "function_call", "status": "in_progress",
                            "call_id": call_id, "name": route.name, "arguments": ""}
    if route.namespace:
        item["namespace"] = route.namespace
    return item


__all__ = ["HOSTED_TOOL_TYPES", "IGNORED_TOOLS_KEY", "Route", "ToolPlan", "call_item", "flat_name", "plan_tools"]

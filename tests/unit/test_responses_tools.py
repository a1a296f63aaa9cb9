"""/v1/responses tool shapes beyond `function` (what Codex sends): `namespace` groups become
prefixed function tools and their calls go back with separate `namespace` and `name`; `custom`
tools take one string; hosted tools (`web_search`, ...) are left out of the prompt, logged and
reported in the response metadata instead of failing the request."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import openai
import pytest

from corral.errors import BadRequestError
from corral.schemas.openai import ResponsesRequest
from corral.server.compat import responses as resp
from corral.server.compat.responses_tools import IGNORED_TOOLS_KEY, flat_name, plan_tools
from tests.appenv import BASE, Env, make_model, sse_events
from tests.native_chunks import chat_chunk

FN = {"type": "function", "name": "shell", "description": "run a command",
      "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}
NAMESPACE = {"type": "namespace", "name": "mcp__node_repl", "description": "a JS kernel",
             "tools": [{"type": "function", "name": "js", "description": "run JS",
                        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}},
                       {"type": "function", "name": "js_reset", "parameters": {"type": "object"}}]}
CODEX_TOOLS = [FN, NAMESPACE, {"type": "web_search"}, {"type": "web_search", "external_web_access": False},
               {"type": "custom", "name": "apply_patch", "description": "patch files",
                "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
               {"type": "namespace", "name": "functions", "description": "built-in",
                "tools": [{"type": "function", "name": "plain", "parameters": {"type": "object"}}]}]


def test_plan_flattens_namespaces_and_leaves_out_hosted_tools() -> None:
    plan = plan_tools(CODEX_TOOLS)
    names = [t["function"]["name"] for t in plan.native]
    assert names == ["shell", "mcp__node_repl__js", "mcp__node_repl__js_reset", "apply_patch", "plain"]
    assert plan.native[1]["function"]["parameters"]["properties"] == {"code": {"type": "string"}}
    assert plan.ignored == ["web_search", "web_search"]
    assert plan.route("mcp__node_repl__js").namespace == "mcp__node_repl"
    assert plan.route("mcp__node_repl__js").name == "js"
    assert plan.route("plain").namespace is None  # the default `functions` namespace adds nothing
    custom = plan.native[3]["function"]
    assert custom["parameters"]["required"] == ["input"] and "start: /.+/" in custom["description"]
    assert flat_name("mcp__srv__", "x") == "mcp__srv__x"


@pytest.mark.parametrize("tools", [[{"type": "telepathy"}],
                                   [{"type": "namespace", "name": "n", "tools": [{"type": "web_telepathy"}]}],
                                   [{"type": "namespace", "tools": []}]])
def test_unknown_tool_types_are_a_400(tools: list[dict[str, Any]]) -> None:
    with pytest.raises(BadRequestError):
        plan_tools(tools)


def test_namespaced_call_goes_back_with_namespace_and_name() -> None:
    rb = resp.ResponseBuilder(ResponsesRequest(model="m", input="x", tools=CODEX_TOOLS))
    call = {"id": "call_9", "function": {"name": "mcp__node_repl__js", "arguments": {"code": "1+1"}}}
    patch = {"id": "call_10", "function": {"name": "apply_patch", "arguments": {"input": "*** Begin Patch"}}}
    frames = rb.convert(chat_chunk({"message": {"content": "", "tool_calls": [call, patch]}, "done": True,
                         "done_reason": "stop"}))
    body = rb.response(rb.final_status())
    fc, custom = body["output"]
    assert fc["type"] == "function_call" and fc["name"] == "js" and fc["namespace"] == "mcp__node_repl"
    assert fc["call_id"] == "call_9" and fc["arguments"] == '{"code": "1+1"}'
    assert custom == {"id": custom["id"], "type": "custom_tool_call", "status": "completed", "call_id": "call_10",
                      "name": "apply_patch", "input": "*** Begin Patch"}
    assert body["metadata"] == {IGNORED_TOOLS_KEY: "web_search"}
    done = [d["item"] for k, d in sse_events(b"".join(frames).decode()) if k == "response.output_item.done"]
    assert done[0]["namespace"] == "mcp__node_repl" and done[1]["type"] == "custom_tool_call"
    parsed = openai.types.responses.Response.model_validate(body)
    assert parsed.output[0].type == "function_call"


def test_history_items_with_namespace_flatten_again() -> None:
    req = ResponsesRequest.model_validate({"model": "m", "tools": CODEX_TOOLS, "input": [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "namespace": "mcp__node_repl", "name": "js",
         "arguments": '{"code": "2"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "2"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "patch"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"}]})
    native = resp.to_chat_request(req)
    assert [m.role for m in native.messages] == ["user", "assistant", "tool", "assistant", "tool"]
    calls = native.messages[1].tool_calls
    assert calls is not None and calls[0].function.name == "mcp__node_repl__js"
    later = native.messages[3].tool_calls
    assert later is not None and later[0].function.arguments == {"input": "patch"}
    assert native.tools is not None and [t.function.name for t in native.tools][:2] == ["shell", "mcp__node_repl__js"]


def test_codex_request_is_served_with_hosted_tools_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = Env(tmp_path)
    make_model(env.store, tmp_path, "tooly", template="{{ range .Tools }}<{{ .Function.Name }}>{{ end }}"
               "{{ range .Messages }}{{ .Content }}{{ end }}")

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=BASE + "/v1", api_key="x", http_client=env.client(), max_retries=0)
        r = await client.responses.create(model="tooly", input="hi", tools=CODEX_TOOLS)  # type: ignore[arg-type]
        assert r.status == "completed" and r.output_text == "Hello world!"
        assert r.metadata == {IGNORED_TOOLS_KEY: "web_search"}
        async with env.client() as c:
            streamed = await c.post("/v1/responses", json={"model": "tooly", "input": "hi", "stream": True,
                                                           "tools": CODEX_TOOLS})
        final = sse_events(streamed.text)[-1][1]["response"]
        assert final["metadata"][IGNORED_TOOLS_KEY] == "web_search"
        await client.close()

    with caplog.at_level(logging.WARNING, logger="corral.server.compat.responses"):
        asyncio.run(main())
    prompt = env.prompts[0]
    assert "<mcp__node_repl__js><mcp__node_repl__js_reset>" in prompt and "<shell>" in prompt
    assert "web_search" not in prompt
    assert any("leaving out hosted tools corral cannot run: web_search" in r.getMessage() for r in caplog.records)

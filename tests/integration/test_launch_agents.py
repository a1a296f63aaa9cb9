"""`corral launch` against a real server with auth on, with stand-in agents: small scripts named
claude / codex / opencode / cn that read exactly what the real agents read (the environment,
`-c` overrides, OPENCODE_CONFIG_CONTENT, the Continue config file) and send one request the way
that agent does (Anthropic /v1/messages, Responses /v1/responses with Codex's tool types, OpenAI
/v1/chat/completions). The real agents need a network to install; see README "Coding agents"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.auth.keys import KeyStore
from tests.support import ServerProcess, running_server

pytestmark = pytest.mark.integration
MODEL = "smollm2:135m"

COMMON = """
import json, os, sys, httpx
def report(r):
    with open(os.environ["AGENT_OUT"], "w") as f:
        json.dump({"argv": sys.argv[1:], "status": r.status_code, "body": r.json()}, f)
"""
AGENTS = {
    "claude": COMMON + """
base, token, model = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_AUTH_TOKEN"], os.environ["ANTHROPIC_MODEL"]
headers = {"Authorization": "Bearer " + token, "anthropic-version": "2023-06-01"}
report(httpx.post(base + "/v1/messages", headers=headers,
                  json={"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi"}]},
                  timeout=120, trust_env=False))
""",
    "codex": COMMON + """
args = sys.argv[1:]
over = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-c")
assert json.loads(over["model_provider"]) == "corral"
base = json.loads(over["model_providers.corral.base_url"])
assert json.loads(over["model_providers.corral.wire_api"]) == "responses"
key = os.environ[json.loads(over["model_providers.corral.env_key"])]
model = args[args.index("-m") + 1]
tools = [{"type": "function", "name": "shell", "parameters": {"type": "object"}}, {"type": "web_search"},
         {"type": "namespace", "name": "mcp__fs", "description": "files",
          "tools": [{"type": "function", "name": "read", "parameters": {"type": "object"}}]}]
report(httpx.post(base + "/responses", headers={"Authorization": "Bearer " + key},
                  json={"model": model, "input": "Say hi", "max_output_tokens": 8, "tools": tools},
                  timeout=120, trust_env=False))
""",
    "opencode": COMMON + """
config = json.loads(os.environ["OPENCODE_CONFIG_CONTENT"])
provider = config["provider"]["corral"]["options"]
key = os.environ[provider["apiKey"][len("{env:"):-1]]
model = config["model"].split("/", 1)[1]
report(httpx.post(provider["baseURL"] + "/chat/completions", headers={"Authorization": "Bearer " + key},
                  json={"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi"}]},
                  timeout=120, trust_env=False))
""",
    "cn": COMMON + """
import yaml
m = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))["models"][0]
report(httpx.post(m["apiBase"] + "/chat/completions", headers={"Authorization": "Bearer " + m["apiKey"]},
                  json={"model": m["model"], "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi"}]},
                  timeout=120, trust_env=False))
""",
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    home = tmp_path_factory.mktemp("launch-home")
    _, key = KeyStore(home / "keys.json").create("manage,infer")
    with running_server(home, {"CORRAL_CONTEXT_LENGTH": "2048", "CORRAL_NUM_PARALLEL": "1"}) as srv:
        r = httpx.post(srv.url + "/api/pull", json={"model": MODEL, "stream": False},
                       headers={"Authorization": f"Bearer {key}"}, timeout=300, trust_env=False)
        assert r.status_code == 200, r.text
        yield srv, key


@pytest.fixture(scope="module")
def agents_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("agents-bin")
    for name, body in AGENTS.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    return bin_dir


def launch(keyed: tuple[ServerProcess, str], agents_bin: Path, tmp_path: Path, *args: str
           ) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    server, key = keyed
    out = tmp_path / "agent.json"
    env = {**os.environ, "CORRAL_HOST": server.url, "CORRAL_API_KEY": key, "CORRAL_HOME": str(tmp_path / "home"),
           "PATH": f"{agents_bin}{os.pathsep}{os.environ['PATH']}", "AGENT_OUT": str(out)}
    done = subprocess.run([sys.executable, "-m", "corral", "launch", *args], env=env, text=True,
                          capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done, json.loads(out.read_text())


@pytest.mark.parametrize("agent", ["claude", "codex", "opencode", "continue"])
def test_agent_reaches_corral_with_the_key(keyed: tuple[ServerProcess, str], agents_bin: Path, tmp_path: Path,
                                           agent: str) -> None:
    done, seen = launch(keyed, agents_bin, tmp_path, agent, "--model", MODEL)
    assert seen["status"] == 200, seen
    body = seen["body"]
    assert isinstance(body, dict)
    if agent == "codex":
        assert body["status"] in ("completed", "incomplete")
        assert body["metadata"] == {"corral_ignored_tools": "web_search"}
    if agent in ("claude", "codex"):  # they need more than the 2048 tokens this server gives
        assert "with a 2048-token context" in done.stderr and "--num-ctx 32768" in done.stderr


def test_num_ctx_creates_a_derived_model(keyed: tuple[ServerProcess, str], agents_bin: Path, tmp_path: Path) -> None:
    server, key = keyed
    done, seen = launch(keyed, agents_bin, tmp_path, "codex", "--model", MODEL, "--num-ctx", "8192", "--", "exec")
    derived = f"{MODEL}-ctx8192"
    argv = seen["argv"]
    assert isinstance(argv, list) and argv[-3:] == ["-m", derived, "exec"] and "model_context_window=8192" in argv
    assert seen["status"] == 200 and "warning" not in done.stderr
    auth = {"Authorization": f"Bearer {key}"}
    show = httpx.post(server.url + "/api/show", json={"model": derived}, headers=auth, trust_env=False).json()
    assert "num_ctx" in show["parameters"] and "8192" in show["parameters"]
    ps = httpx.get(server.url + "/api/ps", headers=auth, trust_env=False).json()["models"]
    assert any(m["name"] == derived and m["context_length"] == 8192 for m in ps)


def test_too_large_agent_request_is_a_clear_400(keyed: tuple[ServerProcess, str]) -> None:
    server, key = keyed
    tools = [{"name": f"tool_{i}", "description": "Reads a file from the workspace. " * 20,
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}} for i in range(40)]
    body = {"model": MODEL, "max_tokens": 16, "system": "You are a careful coding agent. " * 1200, "tools": tools,
            "messages": [{"role": "user", "content": "List the files."}]}
    for stream in (False, True):
        r = httpx.post(server.url + "/v1/messages", json={**body, "stream": stream}, timeout=120, trust_env=False,
                       headers={"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "num_ctx=2048" in message and "with 40 tools" in message and "CORRAL_CONTEXT_LENGTH" in message

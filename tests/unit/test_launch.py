"""`corral launch`: what each agent is given (`--config` needs no server), the key handling, the
derived model for --num-ctx, and the launch itself with a stand-in agent binary."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from corral.cli.launch import AGENTS, build_plan, derived_name, execute
from corral.cli.main import cli
from corral.config import Settings
from corral.schemas.native import ProcessResponse


def run(tmp_path: Path, *args: str, key: str | None = "sekrit-key-123") -> str:
    env = {"CORRAL_HOST": "127.0.0.1:5555", "CORRAL_HOME": str(tmp_path / "home")}
    env["CORRAL_API_KEY"] = key or ""
    result = CliRunner().invoke(cli, ["launch", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def exports(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            out[name] = value
    return out


def test_claude_config(tmp_path: Path) -> None:
    script = run(tmp_path, "claude", "--model", "qwen2.5-coder:0.5b", "--config")
    env = exports(script)
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:5555"
    assert env["ANTHROPIC_AUTH_TOKEN"] == '"$CORRAL_API_KEY"' and env["ANTHROPIC_API_KEY"] == "''"
    for name in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                 "ANTHROPIC_DEFAULT_OPUS_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"):
        assert env[name] == "qwen2.5-coder:0.5b", name
    assert env["CLAUDE_STREAM_IDLE_TIMEOUT_MS"] == env["API_TIMEOUT_MS"] == "1800000"
    assert script.rstrip().splitlines()[-1] == "claude --model qwen2.5-coder:0.5b"
    assert "sekrit" not in script


def test_codex_config_uses_the_responses_api(tmp_path: Path) -> None:
    script = run(tmp_path, "codex", "-m", "qwen2.5-coder:0.5b", "--num-ctx", "32768", "--config")
    command = script.rstrip().splitlines()[-1]
    for override in ("model_provider=\"corral\"", 'model_providers.corral.base_url="http://127.0.0.1:5555/v1"',
                     'model_providers.corral.wire_api="responses"', 'model_providers.corral.env_key="CORRAL_API_KEY"',
                     "model_context_window=32768", "model_providers.corral.stream_idle_timeout_ms=1800000"):
        assert f"-c '{override}'" in command or f"-c {override}" in command, override
    assert command.endswith("-m qwen2.5-coder:0.5b-ctx32768")
    assert "launch first creates qwen2.5-coder:0.5b-ctx32768: FROM qwen2.5-coder:0.5b with PARAMETER num_ctx 32768" \
        in script
    assert exports(script)["CORRAL_API_KEY"] == '"$CORRAL_API_KEY"'


def test_opencode_config_is_inline_json(tmp_path: Path) -> None:
    cfg = Settings(host="127.0.0.1:5555", home=tmp_path, api_key="k1")
    plan = build_plan(AGENTS["opencode"], "qwen:0.5b", cfg, num_ctx=16384)
    content = json.loads(plan.env["OPENCODE_CONFIG_CONTENT"])
    provider = content["provider"]["corral"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"] == {"baseURL": "http://127.0.0.1:5555/v1", "apiKey": "{env:CORRAL_API_KEY}"}
    assert provider["models"]["qwen:0.5b"]["limit"]["context"] == 16384
    assert content["model"] == "corral/qwen:0.5b" and plan.env["CORRAL_API_KEY"] == "k1"
    assert plan.argv == ["opencode"]


def test_continue_config_file(tmp_path: Path) -> None:
    script = run(tmp_path, "continue", "--model", "qwen:0.5b", "--config", "--", "-p", "hello there")
    body = script.split("<<EOF\n", 1)[1].split("\nEOF", 1)[0]
    doc = yaml.safe_load(body)
    model = doc["models"][0]
    assert model["provider"] == "openai" and model["apiBase"] == "http://127.0.0.1:5555/v1"
    assert model["apiKey"] == "${CORRAL_API_KEY}" and "tool_use" in model["capabilities"]
    path = tmp_path / "home" / "launch" / "continue.yaml"
    assert f"cat > {path} <<EOF" in script
    assert script.rstrip().splitlines()[-1] == f"cn --config {path} -p 'hello there'"


def test_without_auth_a_placeholder_key(tmp_path: Path) -> None:
    script = run(tmp_path, "claude", "--model", "m", "--config", key=None)
    assert exports(script)["ANTHROPIC_AUTH_TOKEN"] == "corral"


def test_derived_names() -> None:
    assert derived_name("qwen2.5-coder:0.5b", 32768) == "qwen2.5-coder:0.5b-ctx32768"
    assert derived_name("smollm2", 8192) == "smollm2:latest-ctx8192"
    assert derived_name("localhost:5000/team/m:v1", 4096) == "localhost:5000/team/m:v1-ctx4096"
    assert derived_name("localhost:5000/team/m", 4096) == "localhost:5000/team/m:latest-ctx4096"


def test_execute_writes_files_and_runs_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    agent = bin_dir / "cn"
    agent.write_text('#!/bin/sh\necho "$@" > "$OUT"\necho "key=$CORRAL_API_KEY" >> "$OUT"\nexit 3\n')
    agent.chmod(0o755)
    out = tmp_path / "out.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OUT", str(out))
    plan = build_plan(AGENTS["continue"], "m:1", Settings(home=tmp_path / "home", api_key="k2"), extra=("-p", "x"))
    assert execute(plan) == 3  # the agent's exit status
    config = tmp_path / "home" / "launch" / "continue.yaml"
    assert out.read_text().splitlines()[0] == f"--config {config} -p x"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # it holds the key
    assert 'apiKey: "k2"' in config.read_text()


def test_missing_agent_and_missing_server_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    plan = build_plan(AGENTS["codex"], "m", Settings(home=tmp_path))
    with pytest.raises(Exception, match="npm install -g @openai/codex"):
        execute(plan)
    env = {"CORRAL_HOST": "127.0.0.1:9", "CORRAL_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli, ["launch", "claude", "--model", "m"], env=env)
    assert result.exit_code == 1 and "could not connect" in result.output


class StubClient:
    """What `context_of` asks of a client: a load-only generate, then /api/ps."""

    def __init__(self, ps: list[dict[str, object]]) -> None:
        self.models = ps
        self.loaded: list[str] = []

    def generate(self, body: dict[str, object]) -> list[dict[str, object]]:
        self.loaded.append(str(body["model"]))
        return [{"done": True}]

    def ps(self) -> ProcessResponse:
        base = {"size": 1, "digest": "sha256:" + "0" * 64, "details": {}, "expires_at": "2030-01-01T00:00:00Z"}
        return ProcessResponse.model_validate({"models": [base | {"model": m["name"]} | m for m in self.models]})


def test_context_of_matches_untagged_names() -> None:
    from corral.cli.launch import context_of

    stub = StubClient([{"name": "other:latest", "context_length": 8192},
                       {"name": "qwen-coder:latest", "model": "qwen-coder:latest", "context_length": 4096}])
    assert context_of(stub, "qwen-coder") == 4096  # type: ignore[arg-type]
    assert context_of(stub, "qwen-coder:latest") == 4096  # type: ignore[arg-type]
    assert context_of(stub, "missing") == 0  # type: ignore[arg-type]
    assert stub.loaded == ["qwen-coder", "qwen-coder:latest", "missing"]

"""`corral launch AGENT`: run a coding agent (Claude Code, Codex, OpenCode, Continue) against corral.

As Ollama's `launch`: each agent is pointed at the corral server through the settings it reads,
without touching the user's own configuration of that agent:
- `claude` (Claude Code): Anthropic API (`/v1/messages`) via ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN
  and ANTHROPIC_MODEL (plus the per-tier model variables, so every tier uses the same model);
- `codex`: OpenAI Responses API (`/v1/responses`) via `-c` overrides that define a `corral` model
  provider (`wire_api = "responses"`, key read from CORRAL_API_KEY) and `-m MODEL`;
- `opencode`: OpenAI chat API (`/v1/chat/completions`) via an inline config in OPENCODE_CONFIG_CONTENT;
- `continue` (the `cn` CLI): OpenAI chat API via a config file written under $CORRAL_HOME/launch.
The API key is CORRAL_API_KEY when auth is on (a placeholder otherwise: the agents insist on one).

Coding agents send long system prompts and many tools, so the context matters: with `--num-ctx N`
launch creates (or refreshes) a derived model `MODEL-ctxN` (FROM MODEL, PARAMETER num_ctx N) and
runs the agent on it; without it, launch loads the model, reads the context the server gives it
(`/api/ps`) and warns when it is below what the agent needs. A request that still does not fit is
a 400 naming the sizes (never a silently truncated tool list). `--config` prints what would be set,
as a shell script, and runs nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from corral.client import Client
from corral.config import Settings
from corral.errors import BadRequestError
from corral.schemas.native import CreateRequest

err = Console(stderr=True, highlight=False)
PLACEHOLDER_KEY = "corral"
RECOMMENDED_CTX = 32768
# A local model may take minutes to read an agent's first prompt (tens of thousands of tokens on a
# CPU); the agents drop a stream that is silent for 5 minutes, so they are told to wait longer.
IDLE_TIMEOUT_MS = 30 * 60 * 1000


@dataclass(frozen=True)
class Agent:
    name: str
    title: str
    binary: str
    package: str
    min_ctx: int


AGENTS = {
    "claude": Agent("claude", "Claude Code", "claude", "@anthropic-ai/claude-code", 32768),
    "codex": Agent("codex", "Codex", "codex", "@openai/codex", 16384),
    "opencode": Agent("opencode", "OpenCode", "opencode", "opencode-ai", 16384),
    "continue": Agent("continue", "Continue", "cn", "@continuedev/cli", 16384),
}


@dataclass
class Plan:
    """What launching an agent sets: environment, files, and the command line."""

    agent: Agent
    model: str
    base_url: str
    env: dict[str, str] = field(default_factory=dict)
    files: dict[Path, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def derived_name(model: str, num_ctx: int) -> str:
    """The model `--num-ctx` creates: same name, tag suffixed with the context (`m:0.5b-ctx32768`)."""
    base, tag = with_tag(model).rsplit(":", 1)
    return f"{base}:{tag}-ctx{num_ctx}"


def _claude(plan: Plan, key: str, extra: list[str]) -> None:
    m = plan.model
    plan.env.update({
        "ANTHROPIC_BASE_URL": plan.base_url,
        "ANTHROPIC_AUTH_TOKEN": key,
        "ANTHROPIC_API_KEY": "",
        "ANTHROPIC_MODEL": m,
        "ANTHROPIC_SMALL_FAST_MODEL": m,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": m,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": m,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": m,
        "CLAUDE_CODE_SUBAGENT_MODEL": m,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_STREAM_IDLE_TIMEOUT_MS": str(IDLE_TIMEOUT_MS),
        "API_TIMEOUT_MS": str(IDLE_TIMEOUT_MS),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    })
    plan.argv = ["claude", "--model", m, *extra]


def _codex(plan: Plan, key: str, extra: list[str], num_ctx: int | None) -> None:
    provider = "model_providers.corral"
    overrides = [
        'model_provider="corral"',
        f'{provider}.name="corral"',
        f"{provider}.base_url={json.dumps(plan.base_url + '/v1')}",
        f'{provider}.wire_api="responses"',
        f'{provider}.env_key="CORRAL_API_KEY"',
        f"{provider}.stream_idle_timeout_ms={IDLE_TIMEOUT_MS}",
    ]
    if num_ctx:
        overrides.append(f"model_context_window={num_ctx}")
    plan.env["CORRAL_API_KEY"] = key
    plan.argv = ["codex", *[a for o in overrides for a in ("-c", o)], "-m", plan.model, *extra]


def _opencode(plan: Plan, key: str, extra: list[str], num_ctx: int | None) -> None:
    entry: dict[str, Any] = {"name": plan.model, "tool_call": True}
    if num_ctx:
        entry["limit"] = {"context": num_ctx, "output": min(8192, num_ctx // 4)}
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {"corral": {
            "npm": "@ai-sdk/openai-compatible", "name": "corral",
            "options": {"baseURL": plan.base_url + "/v1", "apiKey": "{env:CORRAL_API_KEY}"},
            "models": {plan.model: entry},
        }},
        "model": f"corral/{plan.model}",
    }
    plan.env.update({"CORRAL_API_KEY": key, "OPENCODE_CONFIG_CONTENT": json.dumps(config)})
    plan.argv = ["opencode", *extra]


def _continue(plan: Plan, key: str, extra: list[str], num_ctx: int | None, home: Path) -> None:
    path = home / "launch" / "continue.yaml"
    lines = [
        "name: corral", "version: 1.0.0", "schema: v1", "models:",
        f"  - name: {json.dumps(plan.model)}", "    provider: openai", f"    model: {json.dumps(plan.model)}",
        f"    apiBase: {json.dumps(plan.base_url + '/v1')}", f"    apiKey: {json.dumps(key)}",
        "    roles: [chat, edit, apply]", "    capabilities: [tool_use]",
    ]
    if num_ctx:
        lines += ["    defaultCompletionOptions:", f"      contextLength: {num_ctx}"]
    plan.files[path] = "\n".join(lines) + "\n"
    plan.argv = ["cn", "--config", str(path), *extra]


def build_plan(agent: Agent, model: str, cfg: Settings, *, num_ctx: int | None = None,
               extra: tuple[str, ...] = ()) -> Plan:
    """Everything `launch` sets for `agent` on `model` (already the derived model with --num-ctx)."""
    plan = Plan(agent, model, cfg.host_url.url)
    key = cfg.api_key or PLACEHOLDER_KEY
    args = list(extra)
    if agent.name == "claude":
        _claude(plan, key, args)
    elif agent.name == "codex":
        _codex(plan, key, args, num_ctx)
    elif agent.name == "opencode":
        _opencode(plan, key, args, num_ctx)
    else:
        _continue(plan, key, args, num_ctx, cfg.home)
    return plan


def render_script(plan: Plan, *, secret: str | None) -> str:
    """The plan as a shell script (`--config`); the API key is shown as $CORRAL_API_KEY."""

    def show(value: str) -> str:
        return '"$CORRAL_API_KEY"' if secret and value == secret else shlex.quote(value)

    out = [f"# {plan.agent.title} -> corral at {plan.base_url}, model {plan.model}"]
    out += [f"# {note}" for note in plan.notes]
    out += [f"export {k}={show(v)}" for k, v in plan.env.items()]
    for path, text in plan.files.items():
        body = text.replace(secret, "${CORRAL_API_KEY}") if secret else text
        out += [f"mkdir -p {shlex.quote(str(path.parent))}", f"cat > {shlex.quote(str(path))} <<EOF", body.rstrip("\n"),
                "EOF"]
    out.append(" ".join(show(a) for a in plan.argv))
    return "\n".join(out) + "\n"


# Talking to the server -----------------------------------------------------------------------------
def with_tag(model: str) -> str:
    """`name` as /api/ps reports it: with its tag (`latest` when none is given)."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def context_of(c: Client, model: str) -> int:
    """The context the server runs `model` with: load it (a prompt-less generate) and read /api/ps."""
    for _ in c.generate({"model": model}):
        pass
    wanted = with_tag(model)
    for entry in c.ps().models:
        if wanted in (with_tag(entry.name), with_tag(entry.model)):
            return entry.context_length or 0
    return 0


def ensure_context(c: Client, model: str, num_ctx: int) -> str:
    """Create (or refresh) `model` with PARAMETER num_ctx `num_ctx`; returns the derived name."""
    name = derived_name(model, num_ctx)
    request = CreateRequest.model_validate({"model": name, "from": model, "parameters": {"num_ctx": num_ctx}})
    for _ in c.create(request):
        pass
    return name


def pick_model(c: Client) -> str:
    """The first local model with the `tools` capability (coding agents need tool calls)."""
    for m in c.list().models:
        if "tools" in (c.show(m.name).capabilities or []):
            return m.name
    raise BadRequestError("no local model supports tools; pull one and pass --model NAME")


def check_context(agent: Agent, model: str, have: int, notes: list[str]) -> None:
    if have and have < agent.min_ctx:
        notes.append(
            f"warning: corral runs {model} with a {have}-token context; {agent.title} sends prompts of "
            f"about {agent.min_ctx // 2}+ tokens (system prompt and tools). Relaunch with --num-ctx "
            f"{RECOMMENDED_CTX} (creates {derived_name(model, RECOMMENDED_CTX)}), or start the server with "
            f"CORRAL_CONTEXT_LENGTH={RECOMMENDED_CTX}.")


def prepare(agent: Agent, cfg: Settings, model: str | None, num_ctx: int | None, extra: tuple[str, ...],
            *, dry_run: bool) -> Plan:
    """Resolve the model (and context) against the server, then build the plan."""
    if dry_run and model:  # --config with a model: nothing to ask the server
        name = derived_name(model, num_ctx) if num_ctx else model
        plan = build_plan(agent, name, cfg, num_ctx=num_ctx, extra=extra)
        if num_ctx:
            plan.notes.append(f"launch first creates {name}: FROM {model} with PARAMETER num_ctx {num_ctx}")
        return plan
    verify: bool | str = str(cfg.ca_bundle) if cfg.ca_bundle else True
    notes: list[str] = []
    with Client(cfg.host_url.url, api_key=cfg.api_key, verify=verify) as c:
        chosen = model or pick_model(c)
        if dry_run:
            return prepare(agent, cfg, chosen, num_ctx, extra, dry_run=True)
        c.show(chosen)  # a clear 404 for an unknown model
        if num_ctx:
            name = ensure_context(c, chosen, num_ctx)
        else:
            name = chosen
            check_context(agent, chosen, context_of(c, chosen), notes)
    plan = build_plan(agent, name, cfg, num_ctx=num_ctx, extra=extra)
    plan.notes += notes
    return plan


def execute(plan: Plan) -> int:
    binary = shutil.which(plan.argv[0])
    if binary is None:
        raise BadRequestError(f"{plan.agent.title} is not installed ('{plan.argv[0]}' not on PATH): "
                              f"npm install -g {plan.agent.package}")
    for path, text in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for note in plan.notes:
        err.print(note, markup=False, soft_wrap=True)
    return subprocess.call([binary, *plan.argv[1:]], env={**os.environ, **plan.env})


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("agent", type=click.Choice(sorted(AGENTS)))
@click.option("-m", "--model", help="Model to use (default: the first local model with tools)")
@click.option("--num-ctx", type=click.IntRange(min=512), help="Context to give the agent: creates MODEL-ctxN")
@click.option("--config", "show_config", is_flag=True, help="Print what would be set instead of running")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def launch(agent: str, model: str | None, num_ctx: int | None, show_config: bool, extra: tuple[str, ...]) -> None:
    """Run a coding agent (claude, codex, opencode, continue) against this corral server.

    Arguments after the agent name (or after --) go to the agent unchanged.
    """
    cfg = Settings.from_env()
    spec = AGENTS[agent]
    plan = prepare(spec, cfg, model, num_ctx, extra, dry_run=show_config)
    if show_config:
        click.echo(render_script(plan, secret=cfg.api_key), nl=False)
        return
    sys.exit(execute(plan))


__all__ = ["AGENTS", "Plan", "build_plan", "derived_name", "launch", "render_script"]

"""`corral run`, `corral ps`, `corral stop`: inference from the terminal through the client.

`run` starts a background server when none answers on a loopback host, pulls the model if it is
missing, then answers one prompt (arguments or piped stdin) or opens the interactive REPL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import click

from corral.cli.answer import print_summary, stream_answer
from corral.cli.common import client, console, settings
from corral.cli.common import err_console as err
from corral.cli.format import human_bytes, human_time, table
from corral.cli.images import user_message
from corral.cli.progress import render_progress
from corral.client import Client
from corral.config import Settings
from corral.durations import parse_go_duration
from corral.errors import ConnectError, CorralError, NotFoundError
from corral.schemas.options import ALL_KEYS, DEPRECATED_KEYS, parse_parameter

SERVER_START_TIMEOUT = 30.0


def ensure_server(cfg: Settings, c: Client) -> None:
    """Start `corral serve` in the background if no server answers on a loopback host."""
    if c.heartbeat():
        return
    if not cfg.host_url.is_loopback:
        raise ConnectError("could not connect to corral server, run 'corral serve' to start it")
    log_dir = cfg.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "server.log"
    with log_path.open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "corral", "serve"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy(),
        )
    err.print(f"started a corral server in the background (log: {log_path})")
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if c.heartbeat():
            return
        time.sleep(0.2)
    raise ConnectError(f"the background server did not start; see {log_path}")


def ensure_model(c: Client, model: str) -> None:
    try:
        c.show(model)
    except CorralError as exc:
        if exc.status != 404:
            raise
        render_progress(c.pull(model), err)


def parse_keepalive(value: str | None) -> Any:
    if value is None:
        return None
    try:
        parse_go_duration(value)
    except ValueError:
        raise click.BadParameter(f"invalid duration {value!r}") from None
    return value


def parse_think(value: str | None) -> Any:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("low", "medium", "high", "max"):
        return lowered
    raise click.BadParameter("think must be true, false, low, medium, high or max")


# llama.cpp's flag names (llama-cli / llama-server) as aliases of the request options.
LLAMA_FLAGS: tuple[tuple[tuple[str, ...], str, Any, str], ...] = (
    (("--num-gpu-layers", "-ngl"), "num_gpu", click.INT, "layers to offload to the GPU"),
    (("--ctx-size", "-c"), "num_ctx", click.INT, "context size in tokens"),
    (("--temp",), "temperature", click.FLOAT, "sampling temperature"),
    (("--top-k",), "top_k", click.INT, "top-k sampling"),
    (("--top-p",), "top_p", click.FLOAT, "top-p (nucleus) sampling"),
    (("--seed",), "seed", click.INT, "random seed (-1: random)"),
    (("--threads", "-t"), "num_thread", click.INT, "CPU threads"),
    (("--n-predict", "-n"), "num_predict", click.INT, "tokens to generate at most (-1: no limit)"),
    (("--repeat-penalty",), "repeat_penalty", click.FLOAT, "penalty for repeated tokens"),
)


def llama_flags(f: Any) -> Any:
    for flags, name, kind, text in reversed(LLAMA_FLAGS):
        f = click.option(*flags, name, type=kind, default=None, help=f"{text[0].upper()}{text[1:]} (option {name})")(f)
    return f


def request_options(flags: dict[str, Any], parameters: tuple[str, ...]) -> dict[str, Any]:
    """The request's `options` from `--parameter NAME=VALUE` and the llama.cpp-style flags."""
    out: dict[str, Any] = {}
    for item in parameters:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="'--parameter'")
        if name not in ALL_KEYS or name in DEPRECATED_KEYS:
            raise click.BadParameter(f"unknown option {name!r}; valid options: {', '.join(sorted(ALL_KEYS))}",
                                     param_hint="'--parameter'")
        try:
            parsed = parse_parameter(name, value)
        except CorralError as exc:
            raise click.BadParameter(f"{name}: {exc.message}", param_hint="'--parameter'") from None
        if name == "stop":
            out.setdefault("stop", []).append(parsed)
        else:
            out[name] = parsed
    for flag_names, option, _, _ in LLAMA_FLAGS:
        given = flags.get(option)
        if given is None:
            continue
        if option in out and out[option] != given:
            raise click.UsageError(f"option {option} is given twice ({flag_names[0]} {given} and "
                                   f"--parameter {option}={out[option]})")
        out[option] = given
    return out


@click.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--parameter", "parameters", multiple=True, metavar="NAME=VALUE",
              help="Set a model option for the request (repeatable), e.g. --parameter num_ctx=8192")
@llama_flags
@click.option("--keepalive", help="Duration to keep a model loaded (e.g. 5m)")
@click.option("--verbose", is_flag=True, help="Show timings for the response")
@click.option("--format", "fmt", help="Response format (e.g. json)")
@click.option("--think", is_flag=False, flag_value="true", default=None, help="Enable thinking")
@click.option("--hidethinking", is_flag=True, help="Hide thinking output")
@click.option("--nowordwrap", is_flag=True, help="Don't wrap words to the next line automatically")
@click.option("--insecure", is_flag=True, help="Use an insecure registry")
def run(model: str, prompt: tuple[str, ...], parameters: tuple[str, ...], keepalive: str | None, verbose: bool,
        fmt: str | None, think: str | None, hidethinking: bool, nowordwrap: bool, insecure: bool,
        **flags: Any) -> None:
    """Run a model: answer PROMPT, or chat interactively.

    Model options can be set with --parameter NAME=VALUE or with llama.cpp's flag names.
    """
    options = request_options(flags, parameters)
    cfg = settings()
    parts = list(prompt)
    interactive = not parts and sys.stdin.isatty()
    if not sys.stdin.isatty():
        parts.insert(0, sys.stdin.read())
        interactive = False
    with client(cfg) as c:
        ensure_server(cfg, c)
        ensure_model(c, model)
        body: dict[str, Any] = {"model": model, "options": options}
        if keepalive:
            body["keep_alive"] = parse_keepalive(keepalive)
        if fmt:
            body["format"] = fmt
        if think is not None:
            body["think"] = parse_think(think)
        if interactive:
            from corral.cli.repl import Repl

            Repl(c, cfg, body, verbose=verbose, hide_thinking=hidethinking).loop()
            return
        msg = user_message(c, model, " ".join(parts))  # with the images it names, for a vision model
        body["prompt"] = msg["content"]
        body.update({"images": msg["images"]} if "images" in msg else {})
        final = stream_answer(c.generate(body), hide_thinking=hidethinking)
        sys.stdout.write("\n")
        sys.stdout.flush()
        if verbose and final is not None:
            print_summary(final)


def processor(model: dict[str, Any]) -> str:
    """Where a loaded model runs, as `ollama ps` prints it: 100% GPU, 100% CPU or 48%/52% CPU/GPU."""
    size, vram = int(model.get("size") or 0), int(model.get("size_vram") or 0)
    if vram <= 0 or size <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    cpu = round((size - vram) * 100 / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


@click.command()
def ps() -> None:
    """List running models."""
    with client() as c:
        models = c.ps().models
    entries = [m.dump() for m in models]  # processor() and the RPC helpers read /api/ps JSON entries
    rows = []
    for m, entry in zip(models, entries, strict=True):
        context = "" if m.context_length is None else str(m.context_length)
        rows.append([m.name, m.digest[:12], human_bytes(m.size), rpc_processor(entry) or processor(entry),
                     context, human_time(m.expires_at)])
    console.print(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows), soft_wrap=True)
    for line in rpc_lines(entries):
        console.print(line, soft_wrap=True, highlight=False)


def rpc_processor(m: dict[str, Any]) -> str | None:
    """The share of layers on RPC workers (`/api/ps` `rpc`), as `ollama ps` prints a CPU/GPU split."""
    rpc = m.get("rpc") or {}
    total = int(rpc.get("layers") or 0)
    if not total:
        return None
    remote = round(100 * (total - int(rpc.get("local_layers", 0))) / total)
    return "100% RPC" if remote == 100 else f"{100 - remote}%/{remote}% CPU/RPC"


def rpc_lines(models: list[dict[str, Any]]) -> list[str]:
    """One line per model whose layers are on RPC workers: how many on each."""
    lines = []
    for m in models:
        rpc = m.get("rpc") or {}
        parts = [f"{w['layers']} on {w['endpoint']} ({human_bytes(int(w.get('free', 0)))} free)"
                 for w in rpc.get("workers", [])]
        if parts:
            lines.append(f"{m['name']}: {rpc.get('local_layers', 0)}/{rpc.get('layers', 0)} layers local, "
                         + ", ".join(parts))
    return lines


@click.command()
@click.argument("model")
def stop(model: str) -> None:
    """Stop a running model."""
    with client() as c:
        running = [m.name for m in c.ps().models]
        if not any(_same(model, name) for name in running):
            raise NotFoundError(f'couldn\'t find model "{model}" to stop')
        for _ in c.generate({"model": model, "prompt": "", "keep_alive": 0}):
            pass


def _same(given: str, loaded: str) -> bool:
    norm = given if ":" in given.rsplit("/", 1)[-1] else given + ":latest"
    return norm.lower() == loaded.lower()

"""`corral` verbs. Every verb but `serve` talks to a server through `corral.client.Client`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from corral import __version__
from corral.cli.common import client, console, fail
from corral.cli.configcmd import config as config_group
from corral.cli.format import human_bytes, human_time, render_show, table
from corral.cli.keys import keys as keys_group
from corral.cli.launch import launch as launch_cmd
from corral.cli.progress import new_progress, render_progress
from corral.cli.worker import worker as worker_cmd
from corral.client import Client
from corral.configfile import load_settings
from corral.errors import BadRequestError, ConnectError, CorralError
from corral.modelfile import parse as parse_modelfile
from corral.modelfile import to_create_fields
from corral.schemas.native import CreateRequest


class CorralGroup(click.Group):
    """Turns CorralErrors into `Error: ...` lines and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConnectError:
            fail("could not connect to corral server, run 'corral serve' to start it")
        except CorralError as exc:
            fail(exc.message)


def print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    with client() as c:
        try:
            server = c.version()
            console.print(f"corral version is {server}")
            if server != __version__:
                console.print(f"Warning: client version is {__version__}")
        except ConnectError:
            console.print("Warning: could not connect to a running corral instance")
            console.print(f"Warning: client version is {__version__}")
    ctx.exit()


@click.group(cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version,
              help="Show version information")
def cli() -> None:
    """corral: run large language models locally (an Ollama-compatible server and CLI)."""


@cli.command("list")
@click.argument("prefix", required=False)
def list_cmd(prefix: str | None) -> None:
    """List models."""
    with client() as c:
        models = c.list().models
    rows = [
        [m.name, m.digest[:12], human_bytes(m.size), human_time(m.modified_at)]
        for m in models
        if not prefix or m.name.startswith(prefix)
    ]
    console.print(table(["NAME", "ID", "SIZE", "MODIFIED"], rows), soft_wrap=True)


cli.add_command(list_cmd, "ls")


@cli.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copy a model."""
    with client() as c:
        c.copy(source, destination)
    console.print(f"copied '{source}' to '{destination}'")


@cli.command()
@click.argument("models", nargs=-1, required=True)
def rm(models: tuple[str, ...]) -> None:
    """Remove one or more models."""
    with client() as c:
        for name in models:
            c.delete(name)
            console.print(f"deleted '{name}'")


@cli.command()
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Use an insecure (http) registry")
def pull(model: str, insecure: bool) -> None:
    """Pull a model from a registry (bundled models import offline)."""
    with client() as c:
        render_progress(c.pull(model, insecure=insecure), console)


@cli.command()
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Use an insecure (http) registry")
def push(model: str, insecure: bool) -> None:
    """Push a model to a registry."""
    with client() as c:
        render_progress(c.push(model, insecure=insecure), console)


@cli.command()
@click.argument("model")
@click.option("--license", "show_license", is_flag=True, help="Show license of a model")
@click.option("--modelfile", "show_modelfile", is_flag=True, help="Show Modelfile of a model")
@click.option("--parameters", "show_parameters", is_flag=True, help="Show parameters of a model")
@click.option("--template", "show_template", is_flag=True, help="Show template of a model")
@click.option("--system", "show_system", is_flag=True, help="Show system message of a model")
@click.option("-v", "--verbose", is_flag=True, help="Show detailed model information")
def show(model: str, show_license: bool, show_modelfile: bool, show_parameters: bool,
         show_template: bool, show_system: bool, verbose: bool) -> None:
    """Show information for a model."""
    with client() as c:
        info = c.show(model, verbose=verbose)
    picks = [
        (show_license, info.license), (show_modelfile, info.modelfile),
        (show_parameters, info.parameters), (show_template, info.template),
        (show_system, info.system),
    ]
    chosen = [value for flag, value in picks if flag]
    if len(chosen) > 1:
        fail("only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified")
    if chosen:
        console.print(chosen[0] or "", markup=False, soft_wrap=True)
        return
    console.print(render_show(info, verbose=verbose), markup=False, soft_wrap=True)


def _resolve_local(arg: str, base: Path) -> Path | None:
    path = Path(arg).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf")) or sorted(path.glob("*.bin"))
        if not ggufs:
            raise BadRequestError("no Modelfile or safetensors files found")
        return ggufs[0]
    return path if path.exists() else None


_WEIGHTS = ("model*.safetensors", "consolidated*.safetensors")
_SIDE_FILES = ("*.json", "*/*.json", "tokenizer.model", "*.jinja")


def _model_files(arg: str, base: Path) -> dict[str, Path] | None:
    """FROM's local files under the names the server sees: one GGUF, or a safetensors model
    directory's weights with its JSON, tokenizer and template files (as Ollama's CLI picks them)."""
    path = Path(arg).expanduser()
    path = path if path.is_absolute() else base / path
    weights = [p for pattern in _WEIGHTS for p in sorted(path.glob(pattern))] if path.is_dir() else []
    if weights:
        extra = [p for pattern in _SIDE_FILES for p in sorted(path.glob(pattern)) if not p.parent.name.startswith(".")]
        return {p.relative_to(path).as_posix(): p for p in [*weights, *extra] if p.is_file()}
    local = _resolve_local(arg, base)
    return {local.name: local} if local is not None else None


def _upload(c: Client, path: Path) -> str:
    with new_progress(console) as progress:
        task = progress.add_task(f"copying file {path.name}", total=path.stat().st_size)
        return c.upload_blob(path, progress=lambda done, total: progress.update(task, completed=done))


def build_create_request(c: Client, name: str, text: str, base: Path) -> CreateRequest:
    """Parse a Modelfile, upload its local FROM/ADAPTER files as blobs, build the request."""
    fields = to_create_fields(parse_modelfile(text))
    source = str(fields.pop("from", ""))
    more = [str(f) for f in fields.pop("from_all", [])[1:]]  # a vision model's projector (mmproj)
    adapters = fields.pop("adapters", [])
    draft = fields.pop("draft", None)
    body: dict[str, Any] = {"model": name, **fields}
    local = _model_files(source, base) if source else None
    if local is not None:
        body["files"] = {name: _upload(c, path) for name, path in local.items()}
    else:
        body["from"] = source
    for extra in more:
        path = _resolve_local(extra, base)
        if path is None or local is None:
            raise BadRequestError(f"a second FROM must be a projector GGUF file beside a model file: {extra}")
        body["files"][path.name] = _upload(c, path)
    if adapters:
        body["adapters"] = {}
        for adapter in adapters:
            path = _resolve_local(adapter, base)
            if path is None:
                raise BadRequestError(f"adapter file not found: {adapter}")
            body["adapters"][path.name] = _upload(c, path)
    if draft:
        body.update(_draft_fields(c, str(draft), base, local))
    return CreateRequest.model_validate(body)


def _draft_fields(c: Client, draft: str, base: Path, local: dict[str, Path] | None) -> dict[str, Any]:
    """DRAFT: a local GGUF file is uploaded (Ollama's draft_files); anything else names a model."""
    path = _resolve_local(draft, base)
    if path is None:
        return {"draft": draft}
    if local is not None and path.resolve() in {p.resolve() for p in local.values()}:
        raise BadRequestError(f"DRAFT must not reference the same local path as FROM: {draft}")
    return {"draft_files": {path.name: _upload(c, path)}}


@cli.command()
@click.argument("model")
@click.option("-f", "--file", "modelfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Name of the Modelfile (default \"Modelfile\")")
@click.option("-q", "--quantize", help="Quantize model to this level (e.g. q4_K_M)")
def create(model: str, modelfile: Path | None, quantize: str | None) -> None:
    """Create a model from a Modelfile."""
    path = modelfile or Path("Modelfile")
    if path.exists():
        try:
            text, base = path.read_text(encoding="utf-8"), path.resolve().parent
        except UnicodeDecodeError as exc:
            fail(f"{path}: not valid UTF-8 text (byte {exc.start}); a Modelfile must be UTF-8")
            return
    elif modelfile is not None:
        fail(f"open {modelfile}: no such file or directory")
        return
    else:
        text, base = "FROM .", Path.cwd()
    with client() as c:
        request = build_create_request(c, model, text, base)
        if quantize:
            request.quantize = quantize
        last = render_progress(c.create(request), console)
    if last is None or last.status != "success":
        fail("create did not finish")


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file (default $CORRAL_CONFIG, else $CORRAL_HOME/config.toml when present)")
@click.option("--host", help="Address to listen on (default $CORRAL_HOST or 127.0.0.1:11434)")
@click.option("--tls-cert", type=click.Path(exists=True, path_type=Path), help="TLS certificate (PEM)")
@click.option("--tls-key", type=click.Path(exists=True, path_type=Path), help="TLS private key (PEM)")
@click.option("--allow-unauthenticated", is_flag=True, help="Allow a non-loopback bind without auth")
def serve(config_file: Path | None, host: str | None, tls_cert: Path | None, tls_key: Path | None,
          allow_unauthenticated: bool) -> None:
    """Start the corral server."""
    from corral.cli.serve import run_server

    cfg = load_settings(
        file=config_file, host=host, tls_cert=tls_cert, tls_key=tls_key,
        allow_unauthenticated=True if allow_unauthenticated else None,
    )
    run_server(cfg)


def _register_inference_verbs() -> None:
    from corral.cli.run import ps, run, stop

    cli.add_command(run)
    cli.add_command(ps)
    cli.add_command(stop)


_register_inference_verbs()
cli.add_command(keys_group)
cli.add_command(launch_cmd)
cli.add_command(config_group)
cli.add_command(worker_cmd)


def main() -> None:
    cli(prog_name="corral")


if __name__ == "__main__":
    main()

"""`corral worker`: lend this machine's memory (or GPU) to corral servers as a llama.cpp RPC worker.

A server started with `CORRAL_RPC_WORKERS=host:port,...` makes its runners offload layers here.
The RPC protocol has no authentication, so a non-loopback bind needs `--allow-unauthenticated`
and gets a loud explanation either way.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import click

from corral.engine.llamacpp.rpc import DEFAULT_PORT, is_loopback_ipv4
from corral.errors import CorralError

MiB = 1024 * 1024


def exposure_text(host: str, port: int) -> str:
    return (
        f"A corral worker runs llama.cpp's RPC server, which has NO authentication and NO encryption.\n"
        f"Anyone who can reach {host}:{port} can allocate this machine's memory, read and write it and\n"
        "run computations on it, and the protocol is not hardened against malicious clients.\n"
        "Run workers only on a private network you trust, with a firewall that lets only your corral\n"
        "servers reach this port. A worker that stops or becomes unreachable aborts the model runner\n"
        "using it (the server then reloads the model without that worker)."
    )


def refuse_exposure(host: str, port: int) -> str:
    return (
        f"Error: refusing to listen on {host}:{port}, which is not a loopback address.\n\n"
        + exposure_text(host, port)
        + f"\n\nIf that is what you want: corral worker --host {host} --port {port} --allow-unauthenticated"
    )


def check_bind(host: str, port: int, allow: bool) -> None:
    """Exit with an explanation unless the bind is loopback or explicitly allowed; warn when allowed."""
    if is_loopback_ipv4(host):
        return
    if not allow:
        sys.exit(refuse_exposure(host, port))
    bar = "!" * 78
    click.echo(f"{bar}\nWARNING: listening on {host}:{port} WITHOUT AUTHENTICATION (--allow-unauthenticated)\n"
               f"{exposure_text(host, port)}\n{bar}", err=True)


def _host(value: str) -> str:
    host = "127.0.0.1" if value.strip().lower() == "localhost" else value.strip()
    try:
        socket.inet_aton(host)
        if host.count(".") != 3:
            raise OSError
    except OSError:
        raise click.BadParameter(f"{value!r}: llama.cpp's RPC server binds an IPv4 address "
                                 "(such as 127.0.0.1, 0.0.0.0 or this machine's LAN address)") from None
    return host


def _port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CorralError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _wait_listening(host: str, port: int, server: threading.Thread) -> bool:
    target = "127.0.0.1" if host == "0.0.0.0" else host
    while server.is_alive():
        try:
            socket.create_connection((target, port), timeout=1.0).close()
            return True
        except OSError:
            server.join(0.05)
    return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="IPv4 address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--mem", type=click.IntRange(min=1), default=None, metavar="MiB",
              help="memory to offer, in MiB (default: what the device reports free)")
@click.option("--allow-unauthenticated", is_flag=True,
              help="allow a non-loopback address (the RPC protocol has no authentication)")
@click.option("--device", "devices", multiple=True, metavar="NAME",
              help="device to serve, e.g. CPU, Vulkan0, CUDA0 (repeatable; default: every GPU, else the CPU)")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all cores)")
@click.option("--cache", is_flag=True, help="keep received weights in a local cache (faster reloads)")
@click.option("--lib-dir", default=None, metavar="DIR", help="llama.cpp libraries built with -DGGML_RPC=ON")
def worker(host: str, port: int, mem: int | None, allow_unauthenticated: bool, devices: tuple[str, ...],
           threads: int | None, cache: bool, lib_dir: str | None) -> None:
    """Serve this machine's memory to corral servers as a llama.cpp RPC worker."""
    host = _host(host)
    check_bind(host, port, allow_unauthenticated)
    from corral.engine.llamacpp.rpcserver import RpcLibrary, find_rpc_lib

    try:
        lib = RpcLibrary(find_rpc_lib(lib_dir))
        chosen = lib.choose(list(devices))
        if mem is not None:
            for dev in chosen:
                lib.cap_memory(dev, mem * MiB)
        _port_free(host, port)
    except CorralError as exc:
        sys.exit(f"Error: {exc.message}")
    cache_dir = None
    if cache:
        cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama.cpp", "rpc")
        os.makedirs(cache_dir, exist_ok=True)
    for dev in chosen:
        info = lib.info(dev)
        click.echo(f"device {info.name} ({info.description}): {info.free // MiB} MiB free of {info.total // MiB} MiB",
                   err=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    server = lib.serve(f"{host}:{port}", chosen, threads=threads or os.cpu_count() or 1, cache_dir=cache_dir)
    if not _wait_listening(host, port, server):
        sys.exit(f"Error: the RPC server could not start on {host}:{port} (see above)")
    reach = "<this machine's address>" if host == "0.0.0.0" else host
    click.echo(f"corral worker listening on {host}:{port} (llama.cpp RPC, libraries from {lib.lib_dir}); "
               f"servers use it with CORRAL_RPC_WORKERS={reach}:{port}", err=True)
    while server.is_alive():
        server.join(1.0)
    sys.exit(1)

"""RPC workers seen from the server process: endpoints, a safe probe, and how layers are split.

A worker is llama.cpp's RPC server (`corral worker`, or `rpc-server` from an `-DGGML_RPC=ON`
build). ggml's RPC client aborts its whole process when a worker is unreachable or goes away, so
the server never runs it: only runner processes do (`rpcdev.py`). This module speaks just enough of
the wire protocol in plain Python sockets, with timeouts, to ask a worker whether it is there, free
(a worker serves one client at a time) and of a compatible version, and how much memory it has.
It also holds the pure arithmetic of the layer split, the same rule llama.cpp applies to
`n_gpu_layers` and `tensor_split`, so the split can be reported and tested without a model.

Protocol (ggml/src/ggml-rpc/ggml-rpc.cpp, version 7.0 in llama-cpp-python 0.3.36): a request is
`cmd (1 byte) | size (u64 LE) | payload`, a reply is `size (u64 LE) | payload`. The first command on
a connection must be HELLO.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from corral.config import RPC_DEFAULT_PORT, rpc_endpoint
from corral.errors import CorralError

RPC_PROTO_MAJOR = 7  # RPC_PROTO_MAJOR_VERSION of the vendored ggml-rpc.h
RPC_PROTO_MINOR = 0
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE (transport.h); zero caps = plain TCP
DEFAULT_PORT = RPC_DEFAULT_PORT
PROBE_TIMEOUT = 3.0  # a free worker answers HELLO in milliseconds; a busy one not at all
RESERVE_BYTES = 256 * 1024 * 1024  # left free on each worker device for its compute buffers


class WorkerUnavailable(CorralError):
    """A worker that cannot take a runner now (unreachable, busy, wrong version)."""


@dataclass(frozen=True)
class Endpoint:
    """`host:port` as ggml's RPC client parses it (split at the first colon; IPv4 or a name)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        try:
            host, _, port = rpc_endpoint(text).partition(":")
        except ValueError as exc:
            raise WorkerUnavailable(str(exc)) from None
        return cls(host, int(port))


def is_loopback_ipv4(host: str) -> bool:
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


# --- the probe ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerInfo:
    endpoint: str
    version: tuple[int, int, int]
    memory: tuple[tuple[int, int], ...]  # (free, total) bytes per device of the worker

    @property
    def free(self) -> int:
        return sum(f for f, _ in self.memory)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the worker closed the connection")
        buf += chunk
    return bytes(buf)


def _command(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(bytes([cmd]) + struct.pack("<Q", len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise ConnectionError(f"unexpected reply size {size} to command {cmd} (expected {reply_size})")
    return _recv_exact(sock, size)


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT) -> WorkerInfo:
    """Ask a worker for its version and memory over a short-lived connection, or raise WorkerUnavailable."""
    ep = Endpoint.parse(endpoint)
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except OSError as exc:
        raise WorkerUnavailable(f"RPC worker {ep} is unreachable: {exc.strerror or exc}") from None
    with sock:
        try:
            hello = _command(sock, CMD_HELLO, bytes(CONN_CAPS_SIZE), 4 + CONN_CAPS_SIZE)
            version = (hello[0], hello[1], hello[2])
            if version[0] != RPC_PROTO_MAJOR or version[1] > RPC_PROTO_MINOR:
                raise WorkerUnavailable(
                    f"RPC worker {ep} speaks protocol {'.'.join(map(str, version))}, this build "
                    f"{RPC_PROTO_MAJOR}.{RPC_PROTO_MINOR}.x: run a worker from the same llama.cpp version"
                )
            (count,) = struct.unpack("<I", _command(sock, CMD_DEVICE_COUNT, b"", 4))
            memory = []
            for i in range(count):
                reply = _command(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16)
                free, total = struct.unpack("<QQ", reply)
                memory.append((int(free), int(total)))
        except TimeoutError:
            raise WorkerUnavailable(
                f"RPC worker {ep} does not answer (busy serving another client? a worker serves one at a time)"
            ) from None
        except OSError as exc:
            raise WorkerUnavailable(f"RPC worker {ep} failed the handshake: {exc}") from None
    return WorkerInfo(str(ep), version, tuple(memory))


async def probe_all(endpoints: Sequence[str], timeout: float = PROBE_TIMEOUT) -> list[WorkerInfo | WorkerUnavailable]:
    """Probe every endpoint at once (in threads); each result is the info or the reason it is unusable."""

    async def one(ep: str) -> WorkerInfo | WorkerUnavailable:
        try:
            return await asyncio.to_thread(probe, ep, timeout)
        except WorkerUnavailable as exc:
            return exc

    return list(await asyncio.gather(*(one(ep) for ep in endpoints)))


async def refusing(endpoints: Sequence[str], timeout: float = 1.0) -> list[str]:
    """The endpoints where nothing listens any more (connection refused or unreachable)."""

    async def gone(ep: str) -> bool:
        e = Endpoint.parse(ep)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(e.host, e.port), timeout)
        except (OSError, TimeoutError):
            return True
        writer.close()
        return False

    flags = await asyncio.gather(*(gone(ep) for ep in endpoints))
    return [ep for ep, dead in zip(endpoints, flags, strict=True) if dead]


# --- the layer split ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """One device of a worker as the runner sees it."""

    endpoint: str
    name: str
    free: int
    total: int


@dataclass(frozen=True)
class Plan:
    """What a runner asks llama.cpp for: `n_gpu_layers` counted from the top, and relative shares."""

    n_gpu_layers: int
    tensor_split: tuple[float, ...]  # one per device, in device order
    layers: tuple[int, ...]  # layers (of n_layer + 1, the output layer counted) per device
    n_units: int  # n_layer + 1
    devices: tuple[Device, ...] = field(default=())

    @property
    def local_layers(self) -> int:
        return self.n_units - sum(self.layers)


def assign_layers(n_layer: int, n_gpu_layers: int, weights: Sequence[float]) -> tuple[int, ...]:
    """Layers per device, as llama.cpp's `load_tensors` assigns them (float32 arithmetic, upper_bound).

    Units are the n_layer repeating layers plus the output layer; the top `n_gpu_layers` go to the
    devices, each to the first device whose cumulative share exceeds its position in that range.
    """
    n_dev = len(weights)
    if n_dev == 0 or n_gpu_layers <= 0:
        return (0,) * n_dev
    splits = np.cumsum(np.asarray(weights, dtype=np.float32), dtype=np.float32)
    splits = (splits / splits[-1]).astype(np.float32)
    start = max(n_layer + 1 - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_layer + 1)
    counts = [0] * n_dev
    for il in range(start, n_layer + 1):
        pos = np.float32(il - start) / np.float32(act)
        dev = int(np.searchsorted(splits, pos, side="right"))
        counts[min(dev, n_dev - 1)] += 1
    return tuple(counts)


def plan_split(
    n_layer: int,
    layer_bytes: int,
    devices: Sequence[Device],
    shares: Sequence[float] = (),
    endpoints: Sequence[str] = (),
    reserve: int = RESERVE_BYTES,
) -> Plan:
    """Decide how many layers go to the workers' devices and in what proportions.

    Without `shares`, every layer that fits goes to the workers (as llama.cpp does with all layers
    offloaded), divided by each device's free memory less `reserve`; what does not fit stays local.
    With `shares` = (this machine, worker 1, ...) over `endpoints`, the layers are divided in those
    proportions, a worker's share among its devices by free memory.
    """
    units = n_layer + 1
    if not devices:
        return Plan(0, (), (), units, ())
    if shares:
        if len(shares) != len(endpoints) + 1:
            raise CorralError(f"the RPC split has {len(shares)} shares for {len(endpoints)} workers "
                              f"(expected {len(endpoints) + 1}: this machine first, then each worker)")
        weights = _share_weights(devices, shares, endpoints)
        remote = sum(shares[1:]) / sum(shares)
        n_gpu = round(units * remote) if sum(weights) > 0 else 0
    else:
        per_layer = max(layer_bytes, 1)
        caps = [max(d.free - reserve, 0) // per_layer for d in devices]
        weights = [float(c) for c in caps]
        n_gpu = min(units, int(sum(caps)))
    if n_gpu <= 0:
        return Plan(0, tuple(0.0 for _ in devices), (0,) * len(devices), units, tuple(devices))
    return Plan(n_gpu, tuple(weights), assign_layers(n_layer, n_gpu, weights), units, tuple(devices))


def _share_weights(devices: Sequence[Device], shares: Sequence[float], endpoints: Sequence[str]) -> list[float]:
    weights = []
    for d in devices:
        share = shares[1 + list(endpoints).index(d.endpoint)]
        siblings = [x for x in devices if x.endpoint == d.endpoint]
        free_sum = sum(x.free for x in siblings)
        weights.append(share * (d.free / free_sum if free_sum > 0 else 1.0 / len(siblings)))
    return weights


def select(
    workers: Sequence[str], configured: Sequence[str], shares: Sequence[float]
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The workers a runner connects to and their shares, from the usable `workers`.

    Without configured shares every usable worker is taken. With them, a worker whose share is 0
    is left alone (a worker serves one client at a time) and a dropped worker takes its share
    with it; when no worker with a share is left the model stays on this machine.
    """
    if not shares:
        return tuple(workers), ()
    kept = [w for w in workers if shares[1 + list(configured).index(w)] > 0]
    if not kept:
        return (), ()
    return tuple(kept), (shares[0], *(shares[1 + list(configured).index(w)] for w in kept))

"""A stand-in for llama.cpp's RPC server that answers the commands corral's probe sends.

Serves one client at a time, like ggml's `ggml_backend_rpc_start_server`: HELLO (with the version
given), DEVICE_COUNT and GET_DEVICE_MEMORY. `silent=True` accepts connections and never answers
(a worker busy with another client looks like that from outside).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY = 14, 15, 11


class FakeWorker:
    def __init__(self, memory: list[tuple[int, int]] | None = None, version: tuple[int, int, int] = (7, 0, 0),
                 silent: bool = False) -> None:
        self.memory = memory if memory is not None else [(8 << 30, 16 << 30)]
        self.version = version
        self.silent = silent
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.endpoint = f"127.0.0.1:{self.port}"
        self.clients = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeWorker:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients += 1
            with conn:
                if self.silent:
                    self._stop.wait()
                    return
                with contextlib.suppress(OSError, ValueError):
                    self._client(conn)

    def _client(self, conn: socket.socket) -> None:
        f = conn.makefile("rwb")
        while True:
            head = f.read(9)
            if len(head) < 9:
                return
            cmd = head[0]
            (size,) = struct.unpack("<Q", head[1:])
            payload = f.read(size)
            if cmd == HELLO:
                reply = bytes([*self.version, 0]) + bytes(24)
            elif cmd == DEVICE_COUNT:
                reply = struct.pack("<I", len(self.memory))
            elif cmd == GET_DEVICE_MEMORY:
                (dev,) = struct.unpack("<I", payload)
                reply = struct.pack("<QQ", *self.memory[dev])
            else:
                return
            f.write(struct.pack("<Q", len(reply)) + reply)
            f.flush()


def closed_port() -> int:
    """A loopback port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

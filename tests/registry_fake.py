"""A small fault-injecting OCI registry for tests, on 127.0.0.1 (threaded http.server).

Serves manifests and blobs (HEAD, GET, Range), accepts pushes (POST/PATCH/PUT, mount), and can
drop a blob connection mid-body, serve wrong bytes, lie about Content-Length, answer 5xx a
number of times, throttle, and require the signed-token challenge flow of spec §7.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_manifest(config: bytes, layers: list[tuple[str, bytes]]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": mt, "digest": digest_of(b), "size": len(b)} for mt, b in layers],
    }
    return (json.dumps(doc) + "\n").encode()


@dataclass
class Faults:
    drop_after: dict[str, int] = field(default_factory=dict)   # digest -> bytes before a drop (once)
    corrupt: set[str] = field(default_factory=set)             # digests served with flipped bytes
    head_length: dict[str, int] = field(default_factory=dict)  # digest -> lying Content-Length
    errors_5xx: int = 0                                        # 503s before any success
    delay_per_chunk: float = 0.0                               # throttle blob bodies
    chunk: int = 64 * 1024
    require_token: bool = False
    public_key: bytes | None = None                           # raw ed25519 key the token endpoint trusts


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-body are part of the tests


class FakeRegistry:
    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}  # "ns/model:tag" -> bytes
        self.blobs: dict[str, bytes] = {}
        self.faults = Faults()
        self.log: list[tuple[str, str, str]] = []  # method, path, range
        self.blob_bytes_sent = 0
        self.uploads: dict[str, bytearray] = {}
        self.hf_files: dict[str, bytes] = {}  # "user/repo/file.gguf" -> bytes (HF-compatible routes)
        self.token_requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        # a short poll: shutdown() waits for the serving loop's next poll (0.5 s by default, per test)
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_model(self, repo_tag: str, config: bytes, layers: list[tuple[str, bytes]]) -> bytes:
        for data in (config, *(b for _, b in layers)):
            self.blobs[digest_of(data)] = data
        manifest = make_manifest(config, layers)
        self.manifests[repo_tag] = manifest
        return manifest

    def requests(self, method: str, part: str = "") -> list[tuple[str, str, str]]:
        return [r for r in self.log if r[0] == method and part in r[1]]


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def _handler(reg: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _gate(self) -> bool:
            with reg.lock:
                reg.log.append((self.command, self.path, self.headers.get("Range", "")))
                if reg.faults.errors_5xx > 0 and not self.path.startswith("/token"):
                    reg.faults.errors_5xx -= 1
                    self._send(503, b"busy")
                    return False
            if reg.faults.require_token and not self.path.startswith("/token"):
                if self.headers.get("Authorization") != "Bearer good-token":
                    realm = f"http://{reg.host}/token"
                    hdr = f'Bearer realm="{realm}",service="fake",scope="repository:x:pull"'
                    self._send(401, b"{}", {"WWW-Authenticate": hdr})
                    return False
            return True

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length", "0") or 0)
            return self.rfile.read(n) if n else b""

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            if self.path.startswith("/token"):
                return self._token()
            if self.path.startswith("/api/models/") or "/resolve/main/" in self.path:
                return self._hf()
            if not self._gate():
                return None
            parts = urlsplit(self.path).path.split("/")
            if len(parts) == 6 and parts[4] == "manifests":
                data = reg.manifests.get(f"{parts[2]}/{parts[3]}:{parts[5]}")
                if data is None:
                    return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                return self._send(200, data, {"Content-Type": MANIFEST_V2, "Content-Length": str(len(data))})
            if len(parts) == 6 and parts[4] == "blobs":
                return self._blob(parts[5])
            if self.path == "/v2/":
                return self._send(200, b"{}")
            return self._send(404)

        def _blob(self, digest: str) -> None:
            data = reg.blobs.get(digest)
            if data is None:
                return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            if self.command == "HEAD":
                length = reg.faults.head_length.get(digest, len(data))
                return self._send(200, b"", {"Content-Length": str(length)})
            if digest in reg.faults.corrupt:
                data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
            start, end, code = 0, len(data) - 1, 200
            m = _RANGE.fullmatch(self.headers.get("Range", ""))
            if m:
                start, code = int(m.group(1)), 206
                end = int(m.group(2)) if m.group(2) else len(data) - 1
            body = data[start : end + 1]
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            with reg.lock:
                drop = reg.faults.drop_after.pop(digest, None) if m else None
            limit = len(body) if drop is None else min(drop, len(body))
            sent = 0
            while sent < limit:
                piece = body[sent : min(limit, sent + reg.faults.chunk)]
                try:
                    self.wfile.write(piece)
                    self.wfile.flush()
                except OSError:
                    return None
                sent += len(piece)
                with reg.lock:
                    reg.blob_bytes_sent += len(piece)
                if reg.faults.delay_per_chunk:
                    time.sleep(reg.faults.delay_per_chunk)
            if drop is not None:
                self.close_connection = True
                self.connection.close()
            return None

        def _hf(self) -> None:
            path = urlsplit(self.path).path
            reg.log.append((self.command, self.path, self.headers.get("Range", "")))
            if path.startswith("/api/models/"):
                repo = path[len("/api/models/"):].removesuffix("/tree/main")
                items = [
                    {"type": "file", "path": k[len(repo) + 1:], "size": len(v),
                     "lfs": {"oid": digest_of(v)[7:], "size": len(v)}}
                    for k, v in reg.hf_files.items() if k.startswith(repo + "/")
                ]
                if not items:
                    return self._send(404, b"{}")
                return self._send(200, json.dumps(items).encode())
            repo, _, fname = path.lstrip("/").partition("/resolve/main/")
            data = reg.hf_files.get(f"{repo}/{fname}")
            if data is None:
                return self._send(404)
            m = _RANGE.fullmatch(self.headers.get("Range", ""))
            start = int(m.group(1)) if m else 0
            code = 206 if m else 200
            return self._send(code, data[start:])

        def _token(self) -> None:
            q = parse_qs(urlsplit(self.path).query)
            auth = self.headers.get("Authorization", "")
            ok = False
            if reg.faults.public_key and ":" in auth:
                _, sig_b64 = auth.split(":", 1)
                url = f"http://{reg.host}{self.path}"
                empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
                try:
                    Ed25519PublicKey.from_public_bytes(reg.faults.public_key).verify(
                        base64.b64decode(sig_b64), f"GET,{url},{empty}".encode()
                    )
                    ok = True
                except Exception:
                    ok = False
            reg.token_requests.append({"query": q, "ok": ok})
            if not ok:
                return self._send(403, b"{}")
            return self._send(200, json.dumps({"token": "good-token"}).encode())

        def do_POST(self) -> None:
            if not self._gate():
                return None
            self._body()
            u = urlsplit(self.path)
            q = parse_qs(u.query)
            repo = "/".join(u.path.split("/")[2:4])
            mount = q.get("mount", [""])[0]
            if mount and mount in reg.blobs:
                return self._send(201, b"", {"Location": f"/v2/{repo}/blobs/{mount}"})
            uid = f"u{len(reg.uploads)}"
            reg.uploads[uid] = bytearray()
            return self._send(202, b"", {"Location": f"/v2/{repo}/blobs/uploads/{uid}"})

        def do_PATCH(self) -> None:
            if not self._gate():
                return None
            uid = urlsplit(self.path).path.rsplit("/", 1)[1]
            data = self._body()
            start = int(self.headers.get("Content-Range", "0-0").split("-")[0])
            if start != len(reg.uploads[uid]):
                return self._send(416)
            reg.uploads[uid] += data
            return self._send(202, b"", {"Location": urlsplit(self.path).path})

        def do_PUT(self) -> None:
            if not self._gate():
                return None
            u = urlsplit(self.path)
            parts = u.path.split("/")
            body = self._body()
            if parts[4] == "manifests":
                reg.manifests[f"{parts[2]}/{parts[3]}:{parts[5]}"] = body
                return self._send(201)
            uid = parts[-1]
            data = bytes(reg.uploads.pop(uid)) + body
            digest = parse_qs(u.query)["digest"][0]
            if digest_of(data) != digest:
                return self._send(400, b"digest mismatch")
            reg.blobs[digest] = data
            return self._send(201)

    return H

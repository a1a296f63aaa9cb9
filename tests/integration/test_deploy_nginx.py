"""deploy/nginx/corral.conf, run by Debian's nginx on loopback in front of two real corral
processes (smollm2:135m, imported offline): requests spread over both replicas, streams pass
through unbuffered, and a replica killed outright costs no request that had not started.

The tests share one cluster and run in file order; the last one kills a replica.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, ServerProcess, free_port

pytestmark = pytest.mark.integration
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMPLATE = ROOT / "deploy" / "nginx" / "corral.conf"
MODEL = "smollm2:135m"

if not os.access(NGINX, os.X_OK):
    pytest.skip("nginx is not installed (apt-get install -y nginx-light; `make test` does it as root)",
                allow_module_level=True)


def render(template: str, port: int, upstreams: list[int]) -> str:
    """The shipped server/upstream blocks with loopback ports instead of the Compose names."""
    conf, n = re.subn(r"listen 11434;", f"listen 127.0.0.1:{port};", template)
    assert n == 1
    for i, up in enumerate(upstreams, 1):
        conf, n = re.subn(rf"server corral-{i}:11434", f"server 127.0.0.1:{up}", conf)
        assert n == 1
    return conf


def nginx_conf(tmp: Path, port: int, upstreams: list[int]) -> Path:
    (tmp / "corral.conf").write_text(render(TEMPLATE.read_text(), port, upstreams))
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # not /var/lib/nginx: runs unprivileged too
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp / kind};" for kind in kinds)
    main = f"""
user {getpass.getuser()};
worker_processes 1;
pid {tmp / "nginx.pid"};
error_log {tmp / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    log_format upstream '$request_method|$uri|$status|$upstream_addr|$upstream_status';
    access_log {tmp / "access.log"} upstream;
{temp_paths}
    include {tmp / "corral.conf"};
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(main)
    return path


@dataclass
class Cluster:
    nodes: list[ServerProcess]
    url: str
    tmp: Path

    def access_log(self) -> list[str]:
        return (self.tmp / "access.log").read_text().splitlines()

    def error_log(self) -> str:
        return (self.tmp / "error.log").read_text()


def _pull_and_warm(node: ServerProcess) -> None:
    with httpx.Client(base_url=node.url, timeout=300, trust_env=False) as c:
        r = c.post("/api/pull", json={"model": MODEL, "stream": False})
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
        r = c.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                          "options": {"num_predict": 1}})
        assert r.status_code == 200, r.text


@contextlib.contextmanager
def running_nginx(tmp: Path, port: int, upstreams: list[int]) -> Iterator[str]:
    conf = nginx_conf(tmp, port, upstreams)
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "nginx exited"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/", timeout=2, trust_env=False).status_code == 200:
                    break
            assert time.monotonic() < deadline, "nginx did not answer"
            time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {"CORRAL_NUM_PARALLEL": "2", "CORRAL_CONTEXT_LENGTH": "1024", "CORRAL_KEEP_ALIVE": "10m",
           "CORRAL_NUM_THREAD": "1"}
    nodes = [ServerProcess(tmp_path_factory.mktemp(f"node{i}"), env) for i in range(2)]
    try:
        for node in nodes:
            node.start()
        threads = [threading.Thread(target=_pull_and_warm, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        tmp = tmp_path_factory.mktemp("nginx")
        with running_nginx(tmp, free_port(), [n.port for n in nodes]) as url:
            yield Cluster(nodes, url, tmp)
    finally:
        for node in nodes:
            node.stop()


def generate(url: str, n: int = 4) -> httpx.Response:
    return httpx.post(url + "/api/generate", timeout=120, trust_env=False,
                      json={"model": MODEL, "prompt": "Say hi.", "stream": False,
                            "options": {"num_predict": n, "temperature": 0}})


def upstreams_of(lines: list[str], path: str) -> list[str]:
    """The `$upstream_addr` of each request to `path`: "A" or, after a retry, "A, B"."""
    return [line.split("|")[3] for line in lines if line.split("|")[1] == path]


def test_requests_spread_across_both_replicas(cluster: Cluster) -> None:
    before = len(cluster.access_log())
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(generate(cluster.url).status_code))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert results == [200] * 6
    # nginx writes a request's access-log line after its response has left: wait for the last ones
    deadline = time.monotonic() + 10
    served = upstreams_of(cluster.access_log()[before:], "/api/generate")
    while len(served) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
        served = upstreams_of(cluster.access_log()[before:], "/api/generate")
    assert len(served) == 6
    assert set(served) == {f"127.0.0.1:{n.port}" for n in cluster.nodes}, served


def test_streaming_passes_through_unbuffered(cluster: Cluster) -> None:
    body: dict[str, Any] = {"model": MODEL, "prompt": "Count from one to fifty.", "stream": True,
                            "ignore_eos": True, "options": {"num_predict": 96, "temperature": 0}}
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with httpx.Client(timeout=120, trust_env=False) as c, c.stream(
        "POST", cluster.url + "/api/generate", json=body
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                arrivals.append((time.monotonic(), json.loads(line)))
    final = arrivals[-1][1]
    assert final["done"] is True and final["eval_count"] == 96
    generating = final["eval_duration"] / 1e9
    spread = arrivals[-1][0] - arrivals[0][0]
    # Chunks arrive as they are generated, not all at once when the answer is complete.
    assert spread >= 0.5 * generating, (spread, generating)
    first_half = [t for t, _ in arrivals if t < arrivals[0][0] + spread / 2]
    assert len(first_half) >= 10


class Stream(threading.Thread):
    """A long streamed generation read in the background: started, done, or cut short."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.started = threading.Event()
        self.lines: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"model": MODEL, "prompt": "Tell a long story.", "stream": True, "ignore_eos": True,
                "options": {"num_predict": 400}}
        try:
            with httpx.Client(timeout=120, trust_env=False) as c, c.stream(
                "POST", self.url + "/api/generate", json=body
            ) as r:
                for line in r.iter_lines():
                    if line:
                        self.lines.append(json.loads(line))
                        self.started.set()
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.started.set()

    @property
    def completed(self) -> bool:
        return bool(self.lines) and self.lines[-1].get("done") is True and self.error is None


def test_killed_replica_loses_no_request_that_had_not_started(cluster: Cluster) -> None:
    victim, survivor = cluster.nodes
    assert victim.proc is not None
    streams = [Stream(cluster.url) for _ in range(2)]  # least_conn: one on each replica
    for s in streams:
        s.start()
        assert s.started.wait(120) and s.lines, s.error
    os.killpg(victim.proc.pid, signal.SIGKILL)  # no goodbye: connections are refused from now on
    victim.proc.wait(timeout=10)
    deadline = time.monotonic() + 60
    while all(s.is_alive() for s in streams):  # the stream on the dead replica ends first
        assert time.monotonic() < deadline, "no stream ended after its replica was killed"
        streams[0].join(0.05)
    before = len(cluster.access_log())  # nginx logs a request when it ends: the cut one is in
    codes = [generate(cluster.url, n=2).status_code for _ in range(6)]
    assert codes == [200] * 6  # requests that had not started all found the survivor
    for s in streams:
        s.join(timeout=180)
    # The stream that had started on the dead replica ends cut short; it is not replayed.
    assert sorted(s.completed for s in streams) == [False, True], [(len(s.lines), s.error) for s in streams]
    dead, alive = f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"
    served = upstreams_of(cluster.access_log()[before:], "/api/generate")
    assert all(addr.split(", ")[-1] == alive for addr in served), served
    # At least one of them was first sent to the dead replica, refused at connect, and passed on.
    assert any(addr.startswith(dead + ", ") for addr in served) or "Connection refused" in cluster.error_log()
    assert "Connection refused" in cluster.error_log()

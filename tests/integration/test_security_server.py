"""Security against real `corral serve` processes: safe binding, TLS, keys over the wire, rate
limits, slow-loris, metrics moving with a real model, and path traversal attempts."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral.client import Client
from corral.errors import UnauthorizedError
from tests.support import ServerProcess, free_port

pytestmark = pytest.mark.integration


def corral(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", *args], env={**os.environ, **env}, text=True,
                          capture_output=True, timeout=timeout, check=False)


def test_public_bind_without_auth_is_refused(tmp_path: Path) -> None:
    env = {"CORRAL_HOME": str(tmp_path), "CORRAL_HOST": f"0.0.0.0:{free_port()}"}
    done = corral(env, "serve", timeout=60)
    assert done.returncode != 0
    assert "refusing to listen" in done.stderr and "corral keys create" in done.stderr


def test_public_bind_allowed_with_flag_or_key(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path, {"CORRAL_HOST": f"0.0.0.0:{port}", "CORRAL_ALLOW_UNAUTHENTICATED": "1"},
                           port=port)
    server.start()
    try:
        assert httpx.get(server.url + "/api/version", trust_env=False).status_code == 200
    finally:
        server.stop()
    assert "WITHOUT AUTHENTICATION" in server.log_tail()
    home2 = tmp_path / "keyed"
    created = corral({"CORRAL_HOME": str(home2)}, "keys", "create", "--scope", "read")
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    keyed = ServerProcess(home2, {"CORRAL_HOST": f"0.0.0.0:{port}"}, port=port).start()
    try:
        assert httpx.get(keyed.url + "/api/tags", trust_env=False).status_code == 401
        ok = httpx.get(keyed.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}, trust_env=False)
        assert ok.status_code == 200
    finally:
        keyed.stop()


# TLS --------------------------------------------------------------------------------------------
def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@contextlib.contextmanager
def tls_server(home: Path, env: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    home.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_certificates(home)
    port = free_port()
    full = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}",
            "CORRAL_TLS_CERT": str(cert), "CORRAL_TLS_KEY": str(key), **env}
    log = (home / "server.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "corral", "serve"], env=full, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "TLS server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/", verify=str(ca), trust_env=False, timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, {"CORRAL_HOME": str(home), "CORRAL_HOST": url, "CORRAL_CA_BUNDLE": str(ca)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        log.close()


def test_https_with_keys_client_cli_and_rate_limit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = corral({"CORRAL_HOME": str(home)}, "keys", "create", "--scope", "read,manage", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    sdk = corral({"CORRAL_HOME": str(home)}, "keys", "create", "--scope", "read").stdout.strip().splitlines()[-1]
    with tls_server(home, {"CORRAL_RATE_LIMIT_RPM": "8"}) as (url, cli_env):
        ca = cli_env["CORRAL_CA_BUNDLE"]
        with pytest.raises(httpx.ConnectError):  # the system trust store does not know our CA
            httpx.get(url + "/", trust_env=False)
        with Client(url, api_key=key, verify=ca) as c:
            assert c.version()
            assert c.list().models == []
        with Client(url, verify=ca) as c, pytest.raises(UnauthorizedError):
            c.list()
        listed = corral({**cli_env, "CORRAL_API_KEY": key}, "list")
        assert listed.returncode == 0, listed.stderr
        assert "NAME" in listed.stdout
        denied = corral(cli_env, "list")
        assert denied.returncode == 1 and "unauthorized" in denied.stderr
        statuses = [httpx.get(url + "/api/tags", headers={"x-api-key": key}, verify=ca,
                              trust_env=False).status_code for _ in range(10)]
        assert 429 in statuses and statuses[0] == 200
        _openai_over_tls(url, sdk, ca)  # another key: rate limits are per key


def _openai_over_tls(url: str, key: str, ca: str) -> None:
    """The official OpenAI SDK over TLS, once /v1 is served (the key has read scope)."""
    import openai

    probe = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, verify=ca, trust_env=False)
    if probe.status_code == 404:
        pytest.skip("/v1 is not served yet")
    with openai.OpenAI(base_url=url + "/v1", api_key=key, http_client=openai.DefaultHttpxClient(verify=ca),
                       max_retries=0) as client:
        assert client.models.list().data == []
    with openai.OpenAI(base_url=url + "/v1", api_key="crl_bad_key", max_retries=0,
                       http_client=openai.DefaultHttpxClient(verify=ca)) as bad, \
            pytest.raises(openai.AuthenticationError):
        bad.models.list()


# Slow loris -------------------------------------------------------------------------------------
def test_slow_loris_does_not_block_others_and_is_cut_off(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, {"CORRAL_HEADER_TIMEOUT": "2", "CORRAL_LOG_FORMAT": "json"}).start()
    try:
        slow = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
            slow.append(s)
        started = time.monotonic()
        for _ in range(5):
            assert httpx.get(server.url + "/api/version", trust_env=False, timeout=5).status_code == 200
        assert time.monotonic() - started < 3
        time.sleep(3)
        for s in slow:
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1024) == b""  # closed by the server, no response
            s.close()
        r = httpx.get(server.url + "/api/version", headers={"X-Request-Id": "loris-check"}, trust_env=False)
        assert r.headers["x-request-id"] == "loris-check"
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log_tail(200_000).splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("logger") == "corral.access" and e.get("request_id") == "loris-check"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/api/version"


# Metrics with a real model (uses the shared session server with smollm2 pulled) ------------------
def _value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_metrics_move_with_real_generation(http: httpx.Client) -> None:
    before = http.get("/metrics").text
    r = http.post("/api/generate", json={"model": "smollm2:135m", "prompt": "Count: 1 2 3", "stream": False,
                                         "options": {"num_predict": 8, "temperature": 0}})
    assert r.status_code == 200, r.text
    after = http.get("/metrics").text
    model = '{model="smollm2:135m"}'
    generated = _value(after, "corral_generated_tokens_total" + model) - _value(
        before, "corral_generated_tokens_total" + model)
    assert generated == r.json()["eval_count"] > 0
    assert _value(after, "corral_time_to_first_token_seconds_count" + model) > _value(
        before, "corral_time_to_first_token_seconds_count" + model)
    assert _value(after, "corral_loaded_models ") >= 1
    assert _value(after, "corral_loaded_model_memory_bytes" + model) > 0
    assert 'route="/api/generate",status="200"' in after
    assert r.headers["x-request-id"]


# Path traversal ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/show", {"model": "../../../../etc/passwd"}),
        ("POST", "/api/copy", {"source": "smollm2:135m", "destination": "../../../outside"}),
        ("POST", "/api/copy", {"source": "smollm2:135m", "destination": "a/../../../../outside:x"}),
        ("POST", "/api/create", {"model": "../../outside", "from": "smollm2:135m"}),
        ("POST", "/api/create", {"model": "evil", "files": {"../../x.gguf": "sha256:" + "0" * 64}}),
        ("DELETE", "/api/delete", {"model": "../../manifests"}),
        ("POST", "/api/pull", {"model": "../../../etc/passwd", "stream": False}),
    ],
)
def test_traversal_via_names_is_rejected(server: ServerProcess, method: str, path: str,
                                         body: dict[str, object]) -> None:
    before = set(server.home.rglob("*"))
    with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as c:
        r = c.request(method, path, content=json.dumps(body))
    assert 400 <= r.status_code < 500, r.text
    created = {p for p in set(server.home.rglob("*")) - before if not p.name.endswith(".log")}
    assert not [p for p in created if "outside" in str(p) or "passwd" in str(p)]
    assert not (server.home.parent / "outside").exists()


@pytest.mark.parametrize("digest", ["sha256:../../../../tmp/corral-evil", "..%2F..%2Fevil",
                                    "sha256-..%2F..%2Fevil", "sha256:" + "0" * 63 + "/",
                                    "sha256:%2e%2e%2f%2e%2e%2fevil"])
def test_traversal_via_blob_digests_is_rejected(server: ServerProcess, digest: str) -> None:
    with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as c:
        up = c.post(f"/api/blobs/{digest}", content=b"payload")
        head = c.head(f"/api/blobs/{digest}")
    # 4xx, or a redirect for a trailing slash (which lands on the same validation): never stored
    assert up.status_code in (307, 400, 404) and head.status_code in (307, 400, 404), (up.text, head.text)
    assert not Path("/tmp/corral-evil").exists()
    assert not list(server.home.parent.glob("evil*"))

"""Registry credentials: the ed25519 key pair and the token challenge flow (spec §7).

Owns creating/loading `<home>/id_ed25519` (OpenSSH format) and its `.pub`, signing challenge
strings as Ollama's auth package does, parsing `WWW-Authenticate` challenges, and static
bearer/basic credentials for other OCI registries. Does not perform HTTP itself beyond the one
token request made through a caller-supplied `httpx.Client`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from corral.errors import CorralError, UnauthorizedError

KEY_NAME = "id_ed25519"
_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 private key and its OpenSSH public key line (`ssh-ed25519 AAAA...`)."""

    private: Ed25519PrivateKey
    public_line: str

    @property
    def public_b64(self) -> str:
        """The base64 part of the public key line (what Ollama puts before the `:`)."""
        return self.public_line.split(" ")[1]

    def sign(self, data: bytes) -> str:
        """`<pubkey-base64>:<base64 signature>` (Ollama's `auth.Sign`)."""
        return f"{self.public_b64}:{base64.b64encode(self.private.sign(data)).decode()}"


def _public_line(key: Ed25519PrivateKey) -> str:
    pub = key.public_key()
    return pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def load_keypair(home: Path) -> KeyPair:
    """Load `<home>/id_ed25519`; CorralError if it is missing or not an ed25519 OpenSSH key."""
    path = home / KEY_NAME
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CorralError(f"could not find private key {path}") from None
    except ValueError as e:
        raise CorralError(f"invalid private key {path}: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CorralError(f"private key {path} is not ed25519")
    return KeyPair(key, _public_line(key))


def ensure_keypair(home: Path) -> tuple[KeyPair, bool]:
    """Load the key pair, creating it (0600 private, 0644 public) if absent; returns (pair, created)."""
    path = home / KEY_NAME
    if path.exists():
        return load_keypair(home), False
    home.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    line = _public_line(key)
    (home / (KEY_NAME + ".pub")).write_text(line + "\n")
    os.chmod(home / (KEY_NAME + ".pub"), 0o644)
    return KeyPair(key, line), True


@dataclass(frozen=True)
class Challenge:
    realm: str
    service: str
    scope: str


def parse_challenge(header: str) -> Challenge | None:
    """Parse `Bearer realm="...",service="...",scope="..."`; None for other schemes."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params = dict(_PARAM_RE.findall(rest))
    if "realm" not in params:
        return None
    return Challenge(params["realm"], params.get("service", ""), params.get("scope", ""))


def challenge_url(ch: Challenge, *, now: float | None = None) -> str:
    """`realm?service=..&scope=..&ts=<unix>&nonce=<16 random bytes, base64url>`."""
    nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()
    query = urlencode(
        {"service": ch.service, "scope": ch.scope, "ts": str(int(now or time.time())), "nonce": nonce}
    )
    return f"{ch.realm}?{query}"


def challenge_signing_data(url: str) -> bytes:
    """`GET,<url>,<base64(hex(sha256 of the empty body))>` as Ollama signs it."""
    empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    return f"GET,{url},{empty}".encode()


def fetch_token(client: httpx.Client, ch: Challenge, registry_host: str, keypair: KeyPair | None) -> str:
    """Answer a Bearer challenge: GET the realm (signed when a key is given) for `{"token":...}`."""
    realm_host = urlsplit(ch.realm).netloc
    if realm_host.lower() != registry_host.lower():
        raise UnauthorizedError(
            f"unauthorized: realm host {realm_host!r} does not match registry {registry_host!r}"
        )
    url = challenge_url(ch)
    headers = {}
    if keypair is not None:
        headers["Authorization"] = keypair.sign(challenge_signing_data(url))
    resp = client.get(url, headers=headers)
    if resp.status_code != 200:
        raise UnauthorizedError(f"unauthorized: token request failed with status {resp.status_code}")
    try:
        token = resp.json().get("token") or resp.json().get("access_token")
    except ValueError:
        token = None
    if not isinstance(token, str) or not token:
        raise UnauthorizedError("unauthorized: no token in the registry's response")
    return token


@dataclass(frozen=True)
class Credentials:
    """Static credentials for one registry host: a bearer token or basic user/password."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def header(self) -> str | None:
        if self.token:
            return f"Bearer {self.token}"
        if self.username is not None:
            raw = f"{self.username}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None

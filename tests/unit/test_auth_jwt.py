"""JWT verification: HS256 and RS256/ES256, exp/nbf/aud/iss, signature, scope claim."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from corral.auth.jwt import JWTVerifier
from corral.errors import UnauthorizedError

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"


def token(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256") -> str:
    base = {"sub": "svc", "exp": int(time.time()) + 60, "aud": "corral", "iss": "idp", "scope": "read infer"}
    return jwt.encode({**base, **claims}, key, algorithm=alg)


def hs() -> JWTVerifier:
    return JWTVerifier(secret=SECRET, audience="corral", issuer="idp")


def test_valid_hs256_token_gives_subject_and_scopes() -> None:
    assert hs().verify(token({})) == ("svc", frozenset({"read", "infer"}))


@pytest.mark.parametrize(
    ("claims", "reason"),
    [  # times are offsets from the moment the test runs, never from collection
        (lambda now: {"exp": now - 5}, "expired"),
        (lambda now: {"nbf": now + 600}, "not yet valid"),
        (lambda now: {"aud": "someone-else"}, "audience"),
        (lambda now: {"iss": "evil"}, "issuer"),
    ],
)
def test_claim_failures(claims: Callable[[int], dict[str, Any]], reason: str) -> None:
    with pytest.raises(UnauthorizedError, match=reason):
        hs().verify(token(claims(int(time.time()))))


def test_missing_exp_is_rejected() -> None:
    raw = jwt.encode({"sub": "svc", "aud": "corral", "iss": "idp"}, SECRET, algorithm="HS256")
    with pytest.raises(UnauthorizedError, match="exp"):
        hs().verify(raw)


def test_wrong_secret_and_alg_none_are_rejected() -> None:
    with pytest.raises(UnauthorizedError, match="signature"):
        hs().verify(token({}, key="another-secret-another-secret-12345"))
    unsigned = jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "aud": "corral", "iss": "idp"}, None,
                          algorithm="none")
    with pytest.raises(UnauthorizedError):
        hs().verify(unsigned)


def _pem_public(private: Any) -> str:
    return str(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode())


@pytest.mark.parametrize(
    ("make", "alg"),
    [(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
     (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256")],
)
def test_asymmetric_tokens(make: Any, alg: str) -> None:
    private, other = make(), make()
    verifier = JWTVerifier(public_key=_pem_public(private), audience="corral", issuer="idp", scope_claim="scp")
    assert verifier.verify(token({"scp": ["manage", "unknown"]}, private, alg)) == ("svc", frozenset({"manage"}))
    with pytest.raises(UnauthorizedError, match="signature"):
        verifier.verify(token({}, other, alg))
    # An HS256 token signed with the public key text must not pass (algorithm confusion).
    with pytest.raises(UnauthorizedError):
        verifier.verify(jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256"))


def test_token_with_audience_rejected_when_none_configured() -> None:
    with pytest.raises(UnauthorizedError, match="audience"):
        JWTVerifier(secret=SECRET).verify(token({}))

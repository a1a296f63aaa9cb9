"""`Authenticator`: turns a presented credential into a `Principal` (who, with which scopes).

Auth is enabled once any API key exists or JWT is configured; until then every request is the
anonymous principal with all scopes (the loopback-only default). Raises `UnauthorizedError` for a
missing or bad credential and `ForbiddenError` for a missing scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.auth.jwt import JWTVerifier
from corral.auth.keys import PREFIX, KeyStore
from corral.auth.scopes import SCOPES, allows
from corral.config import Settings
from corral.errors import ForbiddenError, UnauthorizedError


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; `key_id` is the API key id, `jwt:<sub>`, or None for anonymous."""

    key_id: str | None
    scopes: frozenset[str]
    kind: str  # "key" | "jwt" | "anonymous"


ANONYMOUS = Principal(key_id=None, scopes=frozenset(SCOPES), kind="anonymous")


class Authenticator:
    def __init__(self, keys: KeyStore, jwt: JWTVerifier | None = None) -> None:
        self.keys = keys
        self.jwt = jwt

    @property
    def enabled(self) -> bool:
        return self.jwt is not None or self.keys.has_keys()

    def authenticate(self, credential: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not credential:
            raise UnauthorizedError("unauthorized: an API key is required (Authorization: Bearer <key>)")
        if credential.startswith(PREFIX):
            record = self.keys.verify(credential)
            if record is None:
                raise UnauthorizedError("unauthorized: invalid API key")
            return Principal(key_id=record.id, scopes=frozenset(record.scopes), kind="key")
        if self.jwt is not None and credential.count(".") == 2:
            subject, scopes = self.jwt.verify(credential)
            return Principal(key_id=f"jwt:{subject}", scopes=scopes, kind="jwt")
        raise UnauthorizedError("unauthorized: invalid API key")

    def authorize(self, principal: Principal, needed: str) -> None:
        if not allows(principal.scopes, needed):
            raise ForbiddenError(f"forbidden: this key lacks the '{needed}' scope")


def auth_configured(settings: Settings) -> bool:
    """Whether the server will demand credentials: any API key exists or JWT is configured."""
    from corral.auth.keys import KEYS_FILE

    if settings.jwt_secret or settings.jwt_public_key is not None:
        return True
    return KeyStore(settings.home / KEYS_FILE).has_keys()

"""JWT bearer tokens: verification with PyJWT against an HS256 secret or an RS256/ES256 public key.

`exp` is required; `nbf`, `aud` and `iss` are enforced (aud/iss when configured; a token carrying
an `aud` is rejected when no audience is configured). Scopes come from a configurable claim holding
a space/comma separated string or a list. Every failure is an `UnauthorizedError` whose message says
why, without echoing the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt as pyjwt

from corral.auth.scopes import SCOPES
from corral.errors import UnauthorizedError

_ASYMMETRIC = ["RS256", "ES256"]


class JWTVerifier:
    """Verifies tokens; build with `from_settings`-style explicit arguments."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        scope_claim: str = "scope",
        leeway: float = 0.0,
    ) -> None:
        if not secret and not public_key:
            raise ValueError("a JWT secret or public key is required")
        self._key: Any = public_key if public_key else secret
        self._algorithms = _ASYMMETRIC if public_key else ["HS256"]
        self.audience = audience
        self.issuer = issuer
        self.scope_claim = scope_claim
        self.leeway = leeway

    @classmethod
    def create(
        cls,
        *,
        secret: str | None,
        public_key_path: Path | None,
        audience: str | None,
        issuer: str | None,
        scope_claim: str,
    ) -> JWTVerifier | None:
        """None when JWT is not configured."""
        if not secret and public_key_path is None:
            return None
        public_key = public_key_path.read_text() if public_key_path is not None else None
        return cls(secret=secret, public_key=public_key, audience=audience, issuer=issuer,
                   scope_claim=scope_claim)

    def verify(self, token: str) -> tuple[str, frozenset[str]]:
        """(subject, scopes) of a valid token; UnauthorizedError otherwise."""
        try:
            claims: dict[str, Any] = pyjwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": True, "verify_iss": self.issuer is not None},
            )
        except pyjwt.ExpiredSignatureError:
            raise UnauthorizedError("token expired") from None
        except pyjwt.ImmatureSignatureError:
            raise UnauthorizedError("token not yet valid") from None
        except pyjwt.InvalidAudienceError:
            raise UnauthorizedError("token audience is not accepted") from None
        except pyjwt.InvalidIssuerError:
            raise UnauthorizedError("token issuer is not accepted") from None
        except pyjwt.MissingRequiredClaimError as exc:
            raise UnauthorizedError(f"token is missing the {exc.claim!r} claim") from None
        except pyjwt.InvalidSignatureError:
            raise UnauthorizedError("token signature is invalid") from None
        except pyjwt.InvalidTokenError as exc:
            raise UnauthorizedError(f"invalid token: {type(exc).__name__}") from None
        return str(claims.get("sub", "")), scopes_from_claim(claims.get(self.scope_claim))


def scopes_from_claim(value: object) -> frozenset[str]:
    """Known scopes in a claim value; unknown entries (other services' scopes) are ignored."""
    if isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        items = []
    return frozenset(s for s in (i.strip().lower() for i in items) if s in SCOPES)

"""Signed session tokens (JWT) held in a cookie or header: one claim of them.

A site behind an SSO gateway often carries the viewer's identity as a
signed token: ``{ cookie = "sso", decode = "jwt", jwt = "campus", claim =
"sub" }`` reads the token, checks it with the key of ``[jwt.campus]`` and
yields the claim. A token whose signature does not hold, that has expired
(``exp``), is not yet valid (``nbf``), or names another audience or
issuer than the section asks for, yields nothing. ``verify = false``,
written out, skips the signature check only (for a gateway that already
checked it); expiry is always checked.

The signature check is PyJWT's. Tokens repeat on every event of a viewer,
so what a valid token yielded is kept (at most :data:`MAX_KEPT` tokens,
by a SHA-256 of the token, never the token itself) until its own expiry;
tokens that fail are remembered for a minute in a smaller set
(:data:`MAX_REFUSED`), so that junk cannot push valid tokens out.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import jwt

MAX_KEPT: Final = 10_000
MAX_REFUSED: Final = 1_000
# What each algorithm family needs as a key, for load-time checks.
SYMMETRIC: Final = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """A ``[jwt.NAME]`` section, with its key read at load time."""

    name: str
    algorithms: tuple[str, ...]
    key: str | None = field(repr=False)  # None only when verify is false
    verify: bool = True
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0


class TokenClaim:
    """Reads one claim of tokens checked against one ``[jwt]`` section."""

    __slots__ = ("_kept", "_refused", "claim", "settings")

    def __init__(self, settings: TokenSettings, claim: str) -> None:
        self.settings = settings
        self.claim = claim
        # digest of a token -> (its claim, the time the answer holds until)
        self._kept: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._refused: OrderedDict[bytes, float] = OrderedDict()

    def read(self, token: str) -> str | None:
        """The claim of a valid token; None for any token that is not."""
        now = time.time()
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        kept = self._kept.get(key)
        if kept is not None and kept[1] > now:
            return kept[0]
        refused_until = self._refused.get(key)
        if refused_until is not None and refused_until > now:
            return None

        claims = self._check(token)
        value = claims.get(self.claim) if claims is not None else None
        if isinstance(value, bool) or not isinstance(value, str | int):
            _remember(self._refused, key, now + 60, MAX_REFUSED)
            return None

        # keep the answer until the token expires, an hour at most
        expiry = claims.get("exp") if claims is not None else None
        holds_until = float(expiry) if isinstance(expiry, int | float) else now + 60
        _remember(self._kept, key, (str(value), min(holds_until, now + 3600)), MAX_KEPT)
        return str(value)

    def _check(self, token: str) -> dict[str, Any] | None:
        settings = self.settings
        options: Any = {  # PyJWT types it as a TypedDict
            "verify_signature": settings.verify,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_aud": settings.audience is not None,
            "verify_iss": settings.issuer is not None,
        }
        try:
            claims = jwt.decode(
                token,
                key=settings.key or "",
                algorithms=list(settings.algorithms),
                options=options,
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
            )
        except jwt.PyJWTError:
            return None
        return claims if isinstance(claims, dict) else None


def _remember(
    kept: OrderedDict[bytes, Any], key: bytes, value: Any, bound: int
) -> None:
    kept[key] = value
    kept.move_to_end(key)
    if len(kept) > bound:
        kept.popitem(last=False)

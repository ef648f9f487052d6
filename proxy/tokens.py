"""Telling Label Studio's two kinds of API key apart, as the official SDK does.

Label Studio 1.23 issues *personal access tokens*: long-lived JWT refresh tokens that are exchanged at
``POST /api/token/refresh/`` for short-lived access tokens. Older deployments use *legacy* tokens, opaque
40-character keys sent as ``Authorization: Token <key>``. The SDK treats a key that decodes as a JWT as a
personal access token and anything else as a legacy token; so do we.

Nothing here verifies a signature: the proxy only reads claims (``exp``) of tokens that Label Studio itself
issued and will verify.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def _b64url_decode(segment: str) -> bytes:
    padding = "=" * (-len(segment) % 4)
    return base64.urlsafe_b64decode(segment + padding)


def jwt_claims(token: str) -> dict[str, Any] | None:
    """Return the claims of ``token`` if it is shaped like a JWT, else ``None``.

    A JWT is three base64url segments whose first two decode to JSON objects, the first naming an ``alg``.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
    except (binascii.Error, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(header, dict) or "alg" not in header or not isinstance(claims, dict):
        return None
    return claims


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (seconds since the epoch) of a JWT, or ``None`` when absent or not a number."""
    claims = jwt_claims(token)
    if claims is None:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def is_personal_access_token(key: str) -> bool:
    """True when ``key`` decodes as a JWT (a personal access token), False for a legacy token."""
    return jwt_claims(key) is not None

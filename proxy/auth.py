"""Client keys: who may ask the proxy for annotations.

Callers present a key as ``Authorization: Token <key>``, which is what ``label-studio-sdk`` sends for a
non-JWT ``api_key``. Keys are compared by their SHA-256 digests with :func:`hmac.compare_digest`,
against every configured key without stopping at the first match, so timing reveals neither a key
nor which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from proxy.errors import InvalidClientKey, NotAuthenticated


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ClientKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k) for k in keys)

    @property
    def anonymous(self) -> bool:
        """No keys configured: every caller is let in (settings allow that only on loopback or by opt-in)."""
        return not self._digests

    def check(self, authorization: str | None) -> None:
        """Raise :class:`NotAuthenticated` unless ``authorization`` carries a configured key."""
        if self.anonymous:
            return
        scheme, _, key = (authorization or "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "token" or not key:
            raise NotAuthenticated()
        candidate = _digest(key)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        if not matched:
            raise InvalidClientKey()

    def __repr__(self) -> str:
        return f"ClientKeys(<{len(self._digests)} keys>)"

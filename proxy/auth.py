"""Client keys: who may ask the proxy for annotations, and which projects' annotations each may read.

Callers present a key as ``Authorization: Token <key>``, which is what ``label-studio-sdk`` sends for a
non-JWT ``api_key``. Keys are compared by their SHA-256 digests with :func:`hmac.compare_digest`,
against every configured key without stopping at the first match, so timing reveals neither a key
nor which one matched.

A key is configured as an *entry*: ``<key>`` (every project) or ``<key>:<project>+<project>...`` (only those
projects' annotations; others answer 404, as if they did not exist). Keys are at least 16 printable ASCII
characters without whitespace, ``,`` or ``:`` (hex and base64 keys qualify).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import InvalidClientKey, NotAuthenticated

MIN_KEY_LENGTH = 16

# What a caller may read: None for every project, else the set of project ids.
Scope = frozenset[int] | None


@dataclass(frozen=True)
class ClientKey:
    key: str
    scope: Scope = None

    def __repr__(self) -> str:
        return f"ClientKey(<secret>, scope={sorted(self.scope) if self.scope is not None else 'all'})"


def parse_entry(entry: str) -> ClientKey:
    """One configured entry; ValueError says what is wrong without repeating the key."""
    key, colon, projects = entry.strip().partition(":")
    if len(key) < MIN_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ValueError(f"each key must be at least {MIN_KEY_LENGTH} printable ASCII characters")
    if any(c.isspace() or c == "," for c in key):
        raise ValueError("a key must not contain whitespace or ','")
    if not colon:
        return ClientKey(key)
    ids = projects.split("+")
    if not all(i.isascii() and i.isdigit() and 0 < int(i) < 2**63 for i in ids):
        raise ValueError("a key's scope must be project ids joined by '+', as in <key>:3+14")
    return ClientKey(key, frozenset(int(i) for i in ids))


def one_scope_per_key(keys: Iterable[ClientKey]) -> None:
    """Raise ValueError when one key comes with two scopes: it would be read with whichever came last, and the
    operator's intent is unknown (the wider scope may be the stale one). Names the entries, never the key."""
    first: dict[str, tuple[Scope, int]] = {}
    for number, key in enumerate(keys, 1):
        scope, earlier = first.setdefault(key.key, (key.scope, number))
        if scope != key.scope:
            raise ValueError(
                f"client key entries {earlier} and {number} (counting PROXY_CLIENT_KEYS, then "
                "PROXY_CLIENT_KEYS_FILE) hold the same key with different project scopes: keep one of them"
            )


def read_entries(path: Path) -> list[str]:
    """Entries from a file (a mounted secret): one per line; blank lines and ``#`` comments are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def secret_digest(secret: str) -> bytes:
    """What secrets are compared by (client keys here, the webhook secret in proxy/webhooks.py): their SHA-256,
    so that :func:`hmac.compare_digest` compares equal lengths and the time taken says nothing of the secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


ACCEPTED_HEADERS_KEPT = 1024


class _Accepted(dict[str, tuple[Scope, int]]):
    """Authorization headers (so client keys) mapped to their scopes and key numbers: never shown whole."""

    def __repr__(self) -> str:
        return f"<{len(self)} accepted Authorization headers>"


class ClientKeys:
    def __init__(self, keys: Iterable[ClientKey]) -> None:
        self._keys = tuple((secret_digest(k.key), k.scope) for k in keys)
        # Authorization headers already accepted, exactly as sent: a hit needs no digest. Only accepted ones are
        # kept, so it tells a caller nothing its 200 did not; bounded, since spelling variants are few per key.
        self._accepted = _Accepted()

    @property
    def anonymous(self) -> bool:
        """No keys configured: every caller is let in (settings allow that only on loopback or by opt-in)."""
        return not self._keys

    def check(self, authorization: str | None) -> Scope:
        """The scope of the key in ``authorization``; raise :class:`NotAuthenticated` for no or an unknown key."""
        if self.anonymous:
            return None
        if authorization is not None and authorization in self._accepted:
            return self._accepted[authorization][0]
        return self._match(authorization)[0]

    def number(self, authorization: str | None) -> int | None:
        """Which configured key ``authorization`` holds (its position; None when anonymous), once :meth:`check`
        accepted it: who a request is for, where callers share Label Studio's connections (proxy/fair_slots.py).
        Never the key itself, so it may be held and compared freely."""
        if self.anonymous:
            return None
        if authorization is not None and authorization in self._accepted:
            return self._accepted[authorization][1]
        return self._match(authorization)[1]

    def _match(self, authorization: str | None) -> tuple[Scope, int]:
        scheme, _, presented = (authorization or "").strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "token" or not presented:
            raise NotAuthenticated()
        candidate = secret_digest(presented)
        matched: tuple[Scope, int] | None = None
        for number, (digest, key_scope) in enumerate(self._keys):  # every key, always: the time says nothing
            if hmac.compare_digest(candidate, digest):
                matched = key_scope, number
        if matched is None:
            raise InvalidClientKey()
        if authorization is not None and len(self._accepted) < ACCEPTED_HEADERS_KEPT:
            self._accepted[authorization] = matched
        return matched

    def __repr__(self) -> str:
        return f"ClientKeys(<{len(self._keys)} keys>)"

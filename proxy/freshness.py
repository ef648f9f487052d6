"""Freshness decisions and entity tags: pure functions of an entry, the time and a request header.

A cached version is *fresh* for ``PROXY_CACHE_TTL`` seconds after the proxy fetched it, then *stale* for
``PROXY_STALE_TTL`` more (served at once while one background fetch revalidates it), then *expired* (the next
request waits for Label Studio).
"""

from __future__ import annotations

import enum
import hashlib

from proxy.cache.base import CachedAnnotation


class Freshness(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"


def freshness(entry: CachedAnnotation, *, now: float, ttl: float, stale_ttl: float) -> Freshness:
    age = now - entry.stored_at
    if age < ttl:
        return Freshness.FRESH
    if age < ttl + stale_ttl:
        return Freshness.STALE
    return Freshness.EXPIRED


def entity_tag(body: bytes, created_ago_span: tuple[int, int] | None) -> str:
    """A weak ETag of everything in the body but ``created_ago`` (which the proxy rewrites at serve time).

    Weak (``W/``), because the bytes served under one tag differ as ``created_ago`` moves on.
    """
    digest = hashlib.blake2b(digest_size=16)
    if created_ago_span is None:
        digest.update(body)
    else:
        start, end = created_ago_span
        digest.update(body[:start])
        digest.update(body[end:])
    return f'W/"{digest.hexdigest()}"'


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith(("W/", "w/")) else tag


def if_none_match(header: str | None, etag: str) -> bool:
    """True when ``If-None-Match`` names ``etag`` (weak comparison, RFC 9110 13.1.2) or is ``*``."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(candidate) == wanted for candidate in header.split(","))

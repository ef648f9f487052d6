"""Freshness decisions and entity tags: pure functions of an entry, the time and a request header.

A cached version is *fresh* for ``PROXY_CACHE_TTL`` seconds after the proxy fetched it, then *stale* for
``PROXY_STALE_TTL`` more (served at once while one background fetch revalidates it), then *expired* (the next
request waits for Label Studio).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterator

from proxy.cache.base import CachedAnnotation, Lookup, Missing
from proxy.directives import RequestDirectives
from proxy.policy import CachePolicy
from proxy.served import Served

log = logging.getLogger("proxy.service")  # where these lines were logged from before


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


def age_in_seconds(entry: CachedAnnotation, now: float) -> int:
    """The whole seconds since the proxy fetched ``entry`` (its ``Age`` header); 0 for a clock behind it."""
    return max(0, int(now - entry.stored_at))


def seconds_left(entry: CachedAnnotation, now: float, ttl: float) -> int:
    """The whole seconds ``entry`` stays fresh (``Cache-Status``'s ``ttl=``), negative once stale."""
    return math.floor(entry.stored_at + ttl - now)


class Judge:
    """What the policy, and a request's directives (proxy/directives.py), make of a cached answer now."""

    def __init__(self, policy: CachePolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock

    def state(self, entry: CachedAnnotation) -> Freshness:
        policy = self._policy
        return freshness(entry, now=self._clock(), ttl=policy.ttl, stale_ttl=policy.stale_ttl)

    def fresh(self, cached: Lookup) -> Served | None:
        """A fresh version or a remembered 404, ready to serve; None for anything that needs Label Studio."""
        if isinstance(cached, Missing):
            return Served(None, "negative_hit", missing_since=cached.since)
        if isinstance(cached, CachedAnnotation) and self.state(cached) is Freshness.FRESH:
            return Served(cached, "hit")
        return None

    def accepts(self, directives: RequestDirectives, served: Served) -> bool:
        """Whether the request's ``no-cache``, ``max-age`` and ``min-fresh`` accept a fresh cached answer: a
        version, or a remembered 404 by when Label Studio said it (a deletion Label Studio announced has no
        such moment)."""
        if served.entry is not None:
            return directives.accepts(self._clock() - served.entry.stored_at, self._policy.ttl)
        seen = served.missing_seen
        return directives.accepts(None if seen is None else self._clock() - seen, self._policy.negative_ttl)

    def serves_stale(self, entry: CachedAnnotation, directives: RequestDirectives) -> bool:
        """Whether a version past its freshness is served (while one background fetch revalidates it): within
        the stale window, unless the request's directives narrow or widen it."""
        policy = self._policy
        age = self._clock() - entry.stored_at
        staleness = age - policy.ttl
        if staleness < 0 or not directives.accepts(age, policy.ttl):
            return False
        return directives.accepts_stale(staleness, window=policy.stale_ttl)

    def stale_if_error(self, cached: Lookup, error: str, directives: RequestDirectives) -> Served | None:
        """The last validated version in place of Label Studio's failure (``error``), if it is young enough and
        the request did not refuse it: a request that asks for a fresher answer (``no-cache``, ``max-age``,
        ``min-fresh``, or a ``max-stale`` it is past) wants no stale one, failure or not (RFC 9111 5.2.1)."""
        if not isinstance(cached, CachedAnnotation):
            return None
        policy = self._policy
        age = self._clock() - cached.stored_at
        if age >= policy.stale_if_error_ttl:
            return None
        if not directives.ordinary:
            refused = directives.max_stale is not None and age - policy.ttl > directives.max_stale
            if refused or not directives.accepts(age, policy.ttl):
                return None
        log.warning(
            "Label Studio failed: serving the cached version",
            extra={"annotation_id": cached.annotation_id, "error": error, "age_s": age},
        )
        return Served(cached, "stale_if_error")


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


# An entity tag (RFC 9110 8.8.3): optionally weak, then a quoted string without quotes (commas allowed).
ENTITY_TAG = re.compile(r'\s*(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def encoded_tag(etag: str, coding: str | None) -> str:
    """The tag of a content-coded representation: another tag for other bytes (RFC 9110 8.8.3)."""
    return etag if coding is None else f'{etag[:-1]}-{coding}"'


def if_none_match(header: str, etag: str) -> bool:
    """True when ``If-None-Match`` (every line of it joined: together they are one list) names ``etag`` by weak
    comparison (RFC 9110 13.1.2) or is ``*``. A malformed member is skipped; the rest still count."""
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(opaque == wanted for opaque in _entity_tags(header))


def if_match(header: str) -> bool:
    """True when ``If-Match`` (its lines joined) holds for an annotation the proxy has: only ``*``. If-Match
    compares strongly (RFC 9110 13.1.1), and every tag :func:`entity_tag` makes is weak (``created_ago`` changes
    the bytes under one tag), so no tag it names can match."""
    return header.strip() == "*"


def _entity_tags(header: str) -> Iterator[str]:
    """The quoted opaque parts of an entity-tag list's members. A malformed member is skipped; the rest still
    count."""
    position = 0
    while position < len(header):
        match = ENTITY_TAG.match(header, position)
        if match is None:  # skip to the next member
            comma = header.find(",", position)
            if comma < 0:
                return
            position = comma + 1
            continue
        yield match.group(1)
        position = match.end()

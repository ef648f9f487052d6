"""The ``Cache-Status`` response header (RFC 9211): how this cache answered, in HTTP's words.

The lookup (:mod:`proxy.service`) says what happened in its own terms (:class:`proxy.service.Served`); this module
is where that becomes a header, at the edge with the routes.
"""

from __future__ import annotations

from proxy.freshness import seconds_left
from proxy.served import Served

CACHE_NAME = "annotation-proxy"


def cache_status(
    *,
    hit: bool = False,
    fwd: str = "miss",
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: int | None = None,
    detail: str | None = None,
) -> str:
    """A ``Cache-Status`` header value (RFC 9211) for this cache."""
    params = [CACHE_NAME]
    if hit:
        params.append("hit")
    else:
        params.append(f"fwd={fwd}")
        if fwd_status is not None:
            params.append(f"fwd-status={fwd_status}")
        if stored:
            params.append("stored")
        if collapsed:
            params.append("collapsed")
    if detail:
        params.append(f"detail={detail}")
    if ttl is not None:
        params.append(f"ttl={ttl}")
    return "; ".join(params)


NEGATIVE_HIT = cache_status(hit=True, detail="negative")  # a 404's age is not kept: no ttl
# Answers from the cache (they carry an Age), and their header up to the ttl, which changes by the second.
FROM_CACHE = {
    "hit": cache_status(hit=True),
    "stale": cache_status(hit=True, detail="stale"),
    "stale_if_error": cache_status(hit=True, detail="stale-if-error"),
}


def served_status(served: Served, *, now: float, ttl: float) -> str:
    """The header for one lookup's answer at ``now``; ``ttl``: how long a version is fresh (PROXY_CACHE_TTL).

    ``ttl=`` is the answer's remaining freshness in seconds (negative once stale), on answers from the cache and
    on fetched ones the cache now holds.
    """
    entry = served.entry
    fwd = served.fwd
    if entry is None:
        if served.result == "negative_hit":
            return NEGATIVE_HIT
        return cache_status(fwd=fwd, fwd_status=404, stored=served.stored, collapsed=served.collapsed)
    remaining = seconds_left(entry, now, ttl)
    if served.result in FROM_CACHE:
        return f"{FROM_CACHE[served.result]}; ttl={remaining}"
    return cache_status(
        fwd=fwd,
        fwd_status=200,
        stored=served.stored,
        collapsed=served.collapsed,
        ttl=remaining if served.stored or served.collapsed else None,
    )

"""The ``Cache-Status`` response header (RFC 9211): how this cache answered, in HTTP's words.

The lookup (:mod:`proxy.service`) says what happened in its own terms (:class:`proxy.service.Served`); this module
is where that becomes a header, at the edge with the routes.
"""

from __future__ import annotations

from proxy.service import Served

CACHE_NAME = "annotation-proxy"


def cache_status(
    *,
    hit: bool = False,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
) -> str:
    """A ``Cache-Status`` header value (RFC 9211) for this cache."""
    params = [CACHE_NAME]
    if hit:
        params.append("hit")
    else:
        params.append("fwd=miss")
        if fwd_status is not None:
            params.append(f"fwd-status={fwd_status}")
        if stored:
            params.append("stored")
        if collapsed:
            params.append("collapsed")
    if detail:
        params.append(f"detail={detail}")
    return "; ".join(params)


HIT = cache_status(hit=True)
NEGATIVE_HIT = cache_status(hit=True, detail="negative")
STALE = cache_status(hit=True, detail="stale")
STALE_IF_ERROR = cache_status(hit=True, detail="stale-if-error")


def served_status(served: Served) -> str:
    """The header for one lookup's answer."""
    if served.result == "hit":
        return HIT
    if served.result == "negative_hit":
        return NEGATIVE_HIT
    if served.result == "stale":
        return STALE
    if served.result == "stale_if_error":
        return STALE_IF_ERROR
    return cache_status(
        fwd_status=404 if served.entry is None else 200,
        stored=served.stored,
        collapsed=served.collapsed,
    )

"""What a caller says about caching in its request (RFC 9111 section 5.2.1), and what the proxy does with it.

Pure: headers in, a :class:`RequestDirectives` out, and the decision whether a cached answer of a given age may
answer the request. The lookup (:mod:`proxy.service`) applies it; docs/freshness.md describes every choice.

- ``no-cache``, ``max-age=0`` and ``Pragma: no-cache`` (without Cache-Control) make the proxy ask Label Studio
  before answering; so does a cached version older than ``max-age=N`` or fresh for less than ``min-fresh=N``.
  These *force* a fetch, and ``PROXY_CLIENT_REVALIDATION=off`` makes the proxy ignore them.
- ``max-stale[=N]`` bounds (or, past the proxy's own stale window, widens) how stale an answer may be.
- ``no-store``: nothing fetched for this request is stored.
- ``only-if-cached``: never ask Label Studio; 504 when nothing usable is cached.

Unknown directives and malformed values are ignored, as RFC 9111 asks (a malformed ``max-age`` counts as 0,
the safe reading, section 4.2.1 and 5.2.1.1).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

ANY_STALENESS = math.inf  # max-stale without a value
QUOTED_PAIR = re.compile(r"\\.")  # a backslash and the character it escapes


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    max_age: float | None = None
    min_fresh: float | None = None
    max_stale: float | None = None  # None: the proxy's own stale window applies

    @property
    def ordinary(self) -> bool:
        """True when the request says nothing that changes how it is served (most requests)."""
        return self is ORDINARY or self == ORDINARY

    def accepts(self, age: float | None, ttl: float) -> bool:
        """Whether a cached answer ``age`` seconds old (None: age unknown, a deletion Label Studio announced) may
        answer this request without asking Label Studio, as far as ``no-cache``, ``max-age`` and ``min-fresh`` go
        (``ttl``: how long it is fresh for). Staleness is :meth:`accepts_stale`'s. ``max-age`` is held against
        the whole seconds the answer's ``Age`` header says, not a fraction more."""
        if self.no_cache or self.max_age == 0:  # max-age=0: "revalidate", whatever the age (a clock's tick)
            return False
        if age is None:  # only no-cache and max-age=0 refuse it
            return True
        if self.max_age is not None and int(age) > self.max_age:
            return False
        return self.min_fresh is None or age + self.min_fresh < ttl

    def accepts_stale(self, staleness: float, *, window: float) -> bool:
        """Whether a version ``staleness`` seconds past its freshness may be served while one background fetch
        revalidates it: within the proxy's stale window (``PROXY_STALE_TTL``) unless ``max-stale`` says otherwise;
        never with ``max-age`` but no ``max-stale``, which says "the client does not wish to receive a stale
        response" (RFC 9111 5.2.1.1). (In place of a failure, stale-if-error, it may: RFC 5861 4, "regardless of
        other freshness information", within the request's ``max-age``: proxy/freshness.py.)"""
        if self.max_stale is None:
            return staleness < window and self.max_age is None
        return staleness <= self.max_stale


ORDINARY = RequestDirectives()


def _seconds(value: str | None) -> float:
    """A delta-seconds value (ASCII digits: RFC 9111 1.2.2); a malformed one is 0 (RFC 9111 5.2.1.1: the safe
    reading)."""
    if value is None:
        return 0.0
    value = value.strip().strip('"')
    return float(value) if value.isascii() and value.isdigit() else 0.0


@functools.lru_cache(maxsize=512)  # a handful of values; 2 x MAX_LIST_FIELD bytes each at most (proxy/http_guard.py)
def parse(cache_control: str, pragma: str) -> RequestDirectives:
    """The directives of a request's joined ``Cache-Control`` and ``Pragma`` field values ("" when absent)."""
    if not cache_control:
        pragma_no_cache = any(token.strip().lower() == "no-cache" for token in pragma.split(","))
        return RequestDirectives(no_cache=True) if pragma_no_cache else ORDINARY
    found: dict[str, str | None] = {}
    # A comma inside a quoted value does not end a directive (RFC 9110 5.6.4); quotes are rare, splitting is fast.
    items = _list_items(cache_control) if '"' in cache_control else cache_control.split(",")
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if name and name not in found:  # the first of a repeated directive counts
            found[name] = value if eq else None
    if not found.keys() & {"no-cache", "no-store", "only-if-cached", "max-age", "min-fresh", "max-stale"}:
        return ORDINARY
    max_stale = found.get("max-stale", "")
    return RequestDirectives(
        no_cache="no-cache" in found,
        no_store="no-store" in found,
        only_if_cached="only-if-cached" in found,
        max_age=_seconds(found["max-age"]) if "max-age" in found else None,
        min_fresh=_seconds(found["min-fresh"]) if "min-fresh" in found else None,
        max_stale=None if max_stale == "" else ANY_STALENESS if max_stale is None else _seconds(max_stale),
    )


def _list_items(field: str) -> list[str]:
    """The members of a comma-separated field value whose values may be quoted strings: commas inside quotes do
    not separate. Linear in the value's length, whatever it holds (no backtracking); an escaped character is
    read as an ``_`` (known directives' values are digits; unknown ones are ignored)."""
    items: list[list[str]] = [[]]  # each member's pieces, joined at the end
    for number, segment in enumerate(QUOTED_PAIR.sub("_", field).split('"')):
        if number % 2:  # inside quotes
            items[-1] += ('"', segment, '"')
        else:
            first, *rest = segment.split(",")
            items[-1].append(first)
            items += ([piece] for piece in rest)
    return ["".join(pieces) for pieces in items]


def without_forcing(directives: RequestDirectives, *, stale_window: float) -> RequestDirectives:
    """What remains when callers may not force fetches (``PROXY_CLIENT_REVALIDATION=off``): ``no-store``,
    ``only-if-cached`` and a ``max-stale`` wider than the proxy's stale window, which never ask Label Studio."""
    if directives.ordinary:
        return directives
    max_stale = directives.max_stale
    return RequestDirectives(
        no_store=directives.no_store,
        only_if_cached=directives.only_if_cached,
        max_stale=max_stale if max_stale is not None and max_stale > stale_window else None,
    )

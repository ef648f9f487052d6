"""What one lookup answers: a cached version or a 404, and how the cache produced it (no HTTP here: the
``Cache-Status`` header is written from it at the edge, :mod:`proxy.cache_status`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.cache import CachedAnnotation
from proxy.cache.keyspace import FENCE
from proxy.metrics import CacheResult

Forward = Literal["miss", "request", "stale"]


@dataclass(frozen=True, slots=True)
class Served:
    """The answer to one lookup: a cached version, or ``None`` for a 404, and how the cache produced it."""

    entry: CachedAnnotation | None
    result: CacheResult
    stored: bool = False  # a miss whose answer this request's fetch stored
    collapsed: bool = False  # this request waited for another request's fetch
    # Why a fetched answer was fetched (Cache-Status's fwd, RFC 9211): nothing usable was cached ("miss"); the
    # request's Cache-Control refused a fresh answer ("request"); what was cached was stale, and refused or past
    # its stale window ("stale").
    fwd: Forward = "miss"
    missing_since: int | None = None  # a remembered 404: when it was seen (µs; see proxy.cache.Missing)

    @property
    def missing_seen(self) -> float | None:
        """When a remembered 404 was seen, in seconds since the epoch (its ``Age`` counts from there); None for a
        404 with no such moment: a fetch's own, or a deletion Label Studio announced (:data:`FENCE`)."""
        since = self.missing_since
        return None if since is None or since == FENCE else since / 1_000_000

"""Label Studio's recent error answers for single annotations, remembered for a few seconds, per id.

A 500 for one annotation is Label Studio failing on that annotation (a bug on its side, or an id a hostile caller
picked), not Label Studio failing as a whole: the circuit breaker counts it once per id (proxy/upstream.py), and
this memory answers repeated requests for that id with the same error, without asking Label Studio again, until
``ttl`` has passed. A cached copy still stands in for it (stale-if-error). Only ids and errors are kept, at most
``max_entries``: no body, so nothing here counts in the memory budget.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.errors import UpstreamBadStatus

DEFAULT_TTL = 5.0
DEFAULT_MAX_ENTRIES = 4096


class RecentFailures:
    def __init__(
        self, *, clock: Callable[[], float], ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._failed: dict[int, tuple[float, UpstreamBadStatus]] = {}

    def __len__(self) -> int:
        return len(self._failed)

    def remember(self, annotation_id: int, error: UpstreamBadStatus) -> None:
        self._failed.pop(annotation_id, None)
        if len(self._failed) >= self._max:
            del self._failed[next(iter(self._failed))]  # the oldest first: dicts keep insertion order
        self._failed[annotation_id] = (self._clock() + self._ttl, error)

    def recall(self, annotation_id: int) -> UpstreamBadStatus | None:
        """The error Label Studio answered for this id less than ``ttl`` ago, as a new exception to raise."""
        kept = self._failed.get(annotation_id)
        if kept is None:
            return None
        until, error = kept
        if until <= self._clock():
            del self._failed[annotation_id]
            return None
        return UpstreamBadStatus(error.detail, upstream_status=error.upstream_status)

    def forget(self, annotation_id: int) -> None:
        """The annotation changed (a webhook, a purge): ask Label Studio again."""
        self._failed.pop(annotation_id, None)

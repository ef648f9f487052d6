"""A cached version's response body, rendered once per minute of its age rather than once per request.

Label Studio renders ``created_ago`` per response (Django's ``timesince``), so a cached body is re-rendered for
the moment it is served (:mod:`proxy.created_ago`). The wording only changes at a few instants, and all of them
lie on three minute grids: ``created_at + k minutes`` (``timesince`` counts from ``created_at``), ``created_at``
without its microseconds ``+ k minutes`` (from the calendar "pivot" on, it counts from a microsecond-free moment)
and whole UTC minutes (a month is counted when the day of the month changes, at midnight, if the month is
shorter than the creation day). Between consecutive grid points the body is the same bytes, so it is kept, keyed
by the version and the three grid cells, and a hit is a dictionary lookup (tests/test_render.py checks the claim
against ``timesince`` itself; its property test found the third grid).
"""

from __future__ import annotations

from proxy.cache import CachedAnnotation
from proxy.created_ago import timesince, with_created_ago
from proxy.models import from_epoch_micros

MINUTE_US = 60_000_000
SECOND_US = 1_000_000

# Bodies kept: each version being served needs one (two around a minute boundary). 4096 bodies of about 1 KiB.
DEFAULT_MAX_BODIES = 4096

CellKey = tuple[int, int, str, int, int, int]


def age_cells(created_at_us: int, now_us: int) -> tuple[int, int, int]:
    """The three minute-grid cells ``now`` is in: within one triple of cells ``created_ago`` cannot change."""
    whole_second = created_at_us - created_at_us % SECOND_US
    return (now_us - created_at_us) // MINUTE_US, (now_us - whole_second) // MINUTE_US, now_us // MINUTE_US


def render_body(entry: CachedAnnotation, now_us: int) -> bytes:
    """Label Studio's bytes with ``created_ago`` computed for ``now_us``, without the memo."""
    if entry.created_ago_span is None or entry.created_at is None:
        return entry.body
    then = from_epoch_micros(entry.created_at)
    return with_created_ago(entry.body, entry.created_ago_span, timesince(then, from_epoch_micros(now_us)))


class LiveBodies:
    """Rendered bodies, at most ``max_bodies`` of them, the oldest rendered dropped first."""

    def __init__(self, max_bodies: int = DEFAULT_MAX_BODIES) -> None:
        self._max = max_bodies
        self._bodies: dict[CellKey, bytes] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def body(self, entry: CachedAnnotation, now_us: int) -> bytes:
        created_at = entry.created_at
        if entry.created_ago_span is None or created_at is None:
            return entry.body
        key = (entry.annotation_id, entry.version, entry.etag, *age_cells(created_at, now_us))
        body = self._bodies.get(key)
        if body is None:
            body = render_body(entry, now_us)
            if len(self._bodies) >= self._max:
                del self._bodies[next(iter(self._bodies))]
            self._bodies[key] = body
        return body

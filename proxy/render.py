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

import gzip

from proxy.cache import CachedAnnotation
from proxy.cache.bounded import ByteBoundedMap
from proxy.created_ago import created_ago_parts, timesince
from proxy.models import from_epoch_micros

MINUTE_US = 60_000_000
SECOND_US = 1_000_000

# What one kept body costs beyond its bytes (the key tuple, the dict slot, the bytes object's header).
RECORD_OVERHEAD = 250
# zlib's default: a 19 KB annotation to 3.7 KB in about 0.2 ms, once per rendering (docs/performance.md).
GZIP_LEVEL = 6

# A rendering: the version (id, updated_at, tag), the three grid cells, and the content coding ("" for none).
CellKey = tuple[int, int, str, int, int, int, str]
NO_CELLS = (0, 0, 0)  # a body without created_ago renders the same at every moment


def age_cells(created_at_us: int, now_us: int) -> tuple[int, int, int]:
    """The three minute-grid cells ``now`` is in: within one triple of cells ``created_ago`` cannot change."""
    whole_second = created_at_us - created_at_us % SECOND_US
    return (now_us - created_at_us) // MINUTE_US, (now_us - whole_second) // MINUTE_US, now_us // MINUTE_US


def next_rendering(entry: CachedAnnotation, now_us: int) -> int | None:
    """The first grid point after ``now_us`` (microseconds), where ``entry``'s body may render differently; None
    for a body without ``created_ago``, which never does."""
    created_at = entry.created_at
    if entry.created_ago_span is None or created_at is None:
        return None
    whole_second = created_at - created_at % SECOND_US
    since_created, since_whole_second, utc = age_cells(created_at, now_us)
    return min(
        created_at + (since_created + 1) * MINUTE_US,
        whole_second + (since_whole_second + 1) * MINUTE_US,
        (utc + 1) * MINUTE_US,
    )


def render_body(entry: CachedAnnotation, now_us: int) -> bytes:
    """Label Studio's bytes with ``created_ago`` computed for ``now_us``, without the memo."""
    parts = body_parts(entry, now_us)
    return entry.body if len(parts) == 1 else b"".join(parts)


def gzipped(body: bytes) -> bytes:
    """``body`` gzipped, the same bytes every time (no timestamp in the header)."""
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)


def body_parts(entry: CachedAnnotation, now_us: int) -> tuple[memoryview | bytes, ...]:
    """The body rendered for ``now_us`` as parts to write one after another, without copying the stored bytes:
    for annotations too large for the memo, which would otherwise be copied whole for every response."""
    if entry.created_ago_span is None or entry.created_at is None:
        return (entry.body,)
    value = timesince(from_epoch_micros(entry.created_at), from_epoch_micros(now_us))
    return created_ago_parts(entry.body, entry.created_ago_span, value)


class LiveBodies:
    """Rendered bodies, at most ``max_bytes`` of them (bytes and a per-body overhead), the oldest rendered dropped
    first. A body larger than a quarter of the bound is rendered for its response and not kept: one huge
    annotation must not flush every other one. A gzipped rendering is kept beside the plain one, so a body is
    compressed once per rendering, not once per response."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bodies: ByteBoundedMap[CellKey, bytes] = ByteBoundedMap(max_bytes, overhead=RECORD_OVERHEAD)

    def __len__(self) -> int:
        return len(self._bodies)

    @property
    def size_bytes(self) -> int:
        return self._bodies.size_bytes

    def keeps(self, entry: CachedAnnotation) -> bool:
        """Whether a body of this size is kept here (larger ones are rendered for each response)."""
        return self._bodies.small(len(entry.body))

    def body(self, entry: CachedAnnotation, now_us: int, coding: str | None = None) -> bytes:
        """The body rendered for ``now_us``, gzipped when ``coding`` is ``"gzip"``."""
        created_at = entry.created_at
        if entry.created_ago_span is None or created_at is None:
            if coding is None:
                return entry.body
            cells = NO_CELLS
        else:
            cells = age_cells(created_at, now_us)
        key = (entry.annotation_id, entry.version, entry.etag, *cells, coding or "")
        body = self._bodies.get(key)
        if body is None:
            body = render_body(entry, now_us)
            if coding is not None:
                body = gzipped(body)
            if self.keeps(entry):
                self._bodies.put(key, body, len(body))  # the oldest rendered out first
        return body

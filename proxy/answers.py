"""Whole answers to hot hits, serialized once and written again for as long as every byte of them holds.

Every hit of one annotation version answers the same bytes, its request id aside, until something in them moves
on: ``Date`` and ``Age`` by the second, ``Cache-Status``'s ``ttl=`` by the second of the version's freshness, the
body's ``created_ago`` by the minute (proxy/render.py). Building and serializing those headers was about two
fifths of a hit's cost on a real socket (docs/performance-log.md). An :class:`Answer` keeps them as header lines
ready to write, with the body, until the first instant any of them would differ (:func:`holds_until`).

The edge's request id is written between the answer's lines (proxy/direct.py), so an answer from here and one
built afresh are the same bytes in the same order. An answer is used only for the very entry it was built from:
a new version, or the same one fetched again, is another object, and only between the instant it was built and
:func:`holds_until` (a clock stepped back finds none). Only a hit the hot tier answered keeps one: it is asked
again and again, where each read from the store is a new object. Bounded in bytes (proxy/budget.py), the entry's
own bytes counted too (an answer keeps its entry alive), oldest out first, and none over a quarter of the bound,
so that one large answer cannot push every other out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.cache import CachedAnnotation
from proxy.cache.bounded import ByteBoundedMap
from proxy.direct import DirectResponse
from proxy.freshness import age_in_seconds, seconds_left
from proxy.render import next_rendering

# What one kept answer costs beyond its header lines and body (the record, its key, the map's slots; tracemalloc,
# tests/test_answers.py).
ANSWER_OVERHEAD = 400
# An answer is dropped this long before the instant it would change, so that float rounding never keeps it past.
MARGIN = 1e-6

AnswerKey = tuple[int, str, str]  # annotation id, entity tag, content coding ("" for none)


@dataclass(frozen=True, slots=True)
class Answer:
    """A 200 for a hit of ``entry``: its header lines before and after the edge's (``Cache-Control`` among the
    first), and its body. Good for requests from ``since`` (when it was built) until just before ``until``
    (wall-clock seconds)."""

    entry: CachedAnnotation
    since: float
    until: float
    fixed: tuple[bytes, bytes]
    body: bytes

    @property
    def size(self) -> int:
        """Bytes it holds: its own, and its entry's body, which it keeps alive."""
        return len(self.fixed[0]) + len(self.fixed[1]) + len(self.body) + len(self.entry.body)

    def response(self, now: float) -> DirectResponse:
        return DirectResponse(status=200, body=self.body, now=now, fixed=self.fixed)


def holds_until(entry: CachedAnnotation, now: float, ttl: float) -> float:
    """The first instant after ``now`` at which a hit of ``entry`` may be answered with other bytes (less
    :data:`MARGIN`): the next second (``Date``), the next second of its age (``Age``, ``int(now - stored_at)``),
    of its remaining freshness (``Cache-Status``'s ``ttl=``, ``floor(stored_at + ttl - now)``), and the next
    instant its body renders differently. ``ttl``: PROXY_CACHE_TTL."""
    stored_at = entry.stored_at
    age_changes = stored_at + age_in_seconds(entry, now) + 1
    ttl_changes = stored_at + ttl - seconds_left(entry, now, ttl)  # the last instant of this ttl= value
    until = min(math.floor(now) + 1, age_changes, ttl_changes)
    rendering = next_rendering(entry, int(now * 1_000_000))
    if rendering is not None:
        until = min(until, rendering / 1_000_000)
    return until - MARGIN


def answer_key(entry: CachedAnnotation, coding: str | None) -> AnswerKey:
    return entry.annotation_id, entry.etag, coding or ""


class Answers:
    """:class:`Answer`\\ s by annotation version and content coding, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int) -> None:
        self._answers: ByteBoundedMap[AnswerKey, Answer] = ByteBoundedMap(max_bytes, overhead=ANSWER_OVERHEAD)

    def __len__(self) -> int:
        return len(self._answers)

    @property
    def size_bytes(self) -> int:
        return self._answers.size_bytes

    def get(self, entry: CachedAnnotation, coding: str | None, now: float) -> Answer | None:
        """The answer kept for ``entry`` itself in ``coding``, if it still holds at ``now``."""
        answer = self._answers.get(answer_key(entry, coding))
        if answer is None or answer.entry is not entry or not answer.since <= now < answer.until:
            return None
        return answer

    def keep(self, answer: Answer, coding: str | None) -> None:
        """Keep ``answer`` (in place of the one before it for the same version and coding), unless it is larger
        than a quarter of the bound."""
        key = answer_key(answer.entry, coding)
        if self._answers.small(answer.size):
            self._answers.put(key, answer, answer.size)
        else:
            self._answers.pop(key)

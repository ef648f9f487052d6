"""The hot tier: answers the proxy has just served from its store, kept in process for a few seconds.

A hit on Redis costs a round trip and a decode; most of a busy proxy's hits are for the same few annotations, so
the answer to a hit (a fresh version, or a remembered 404) is kept here for at most ``ttl`` seconds and never past
the version's own freshness (a 404, never past the store's own marker). Coherent across replicas: every change to
the store's view of an annotation that a process may hold a copy of is announced by the store (Redis pub/sub, see
:meth:`proxy.cache.base.AnnotationStore.changes`), and every replica drops its copy when it hears it. While the
announcements cannot be heard (not yet subscribed, connection lost) the tier is off; after a resubscription it
starts empty, since what was missed is unknown.

A read that began before a change must not put the older answer back after the change was heard: every drop
moves :attr:`HotTier.epoch` on, and :meth:`HotTier.put` refuses an answer read under an older epoch.

When a copy's time is up but its version is still fresh, :meth:`HotTier.get` still answers with it and asks for it
to be read again (:attr:`HotTier.read_again`, proxy/hot_copies.py), once, serving it meanwhile for at most
:data:`REREAD_GRACE`: hits do not wait for the store. What the read finds replaces that copy only if it is still
the one kept (:meth:`HotTier.renew`): a drop or a clear takes it away (and the read may predate the change that
did), and a request's own read, or a hit after the grace, puts another in its place. A copy no hit asks for within
the grace goes when the next one finds it, as before.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxy.cache.base import AnnotationKey, Variant
from proxy.cache.bounded import ByteBoundedMap

# What the tier keeps is the lookup's to choose (its answer to a hit, ready to serve again: no work per hit); the
# tier only needs its size.
V = TypeVar("V")

# What one kept answer costs beyond its body (the key, the record, the dict slot), so the bound holds for 404s too.
RECORD_OVERHEAD = 300
# Each answer is kept for between (1 - SPREAD) x ttl and ttl, drawn at random: answers read together (a warm-up,
# a deploy, a burst) are not all read from the store again in the same moment, which showed in the tail latency.
SPREAD = 0.25
# How long past its time a copy is still served while it is read again (never past its version's freshness): after
# that, a read that hangs no longer holds it, and the next request looks the id up itself.
REREAD_GRACE = 1.0


@dataclass(slots=True)
class _Kept(Generic[V]):
    answer: V
    until: float  # wall-clock seconds: read again from then
    fresh_until: float  # and never served from then
    rereading: bool = False


class HotTier(Generic[V]):
    def __init__(
        self,
        *,
        ttl: float,
        max_bytes: int,
        clock: Callable[[], float],
        draw: Callable[[], float] = random.random,  # in [0, 1): where in the spread an answer's end falls
    ) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._draw = draw
        self._kept: ByteBoundedMap[AnnotationKey, _Kept[V]] = ByteBoundedMap(max_bytes, overhead=RECORD_OVERHEAD)
        # Called with a key and its due copy, to read it again (then renew or forget it); None: due copies just go.
        self.read_again: Callable[[AnnotationKey, object], None] | None = None
        self.enabled = False  # on once the store's announcements are heard (see module docstring)
        self.epoch = 0

    @property
    def size_bytes(self) -> int:
        return self._kept.size_bytes

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: AnnotationKey, *, due: bool = True) -> V | None:
        """The copy of ``key``; past its time (see the module docstring), only if ``due`` (a request whose
        Cache-Control the lookup judges for itself takes none: it neither waits for nor starts a read)."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        now = self._clock()
        if now < kept.until:
            return kept.answer
        read_again = self.read_again
        if read_again is not None and now < min(kept.fresh_until, kept.until + REREAD_GRACE):
            if not due:
                return None
            if not kept.rereading:
                kept.rereading = True
                read_again(key, kept)
            return kept.answer
        self._kept.pop(key)
        return None

    def put(self, key: AnnotationKey, answer: V, *, size: int, fresh_until: float, epoch: int) -> None:
        """Keep ``answer`` (``size`` bytes of body; read from the store under ``epoch``) until ``fresh_until`` or
        at most ``ttl`` from now (see :data:`SPREAD`)."""
        if not self.enabled or epoch != self.epoch or self.ttl <= 0:
            return
        until = min(fresh_until, self._clock() + self.ttl * (1 - SPREAD * self._draw()))
        if self._kept.fits(size):
            self._kept.put(key, _Kept(answer, until, fresh_until), size)  # the oldest kept out first

    def renew(self, key: AnnotationKey, copy: object, answer: V, *, size: int, fresh_until: float) -> None:
        """Replace ``copy``, the due copy of ``key`` that :attr:`read_again` was given, with ``answer``, read since:
        only while that copy is still the one kept."""
        if self._kept.get(key) is copy:
            self.put(key, answer, size=size, fresh_until=fresh_until, epoch=self.epoch)

    def forget(self, key: AnnotationKey, copy: object) -> None:
        """Let ``copy`` go (read again, nothing fresh was found), if it is still the one kept: the next request
        looks the id up itself."""
        if self._kept.get(key) is copy:
            self._kept.pop(key)

    def drop(self, annotation_id: int) -> None:
        """The annotation changed: forget what is kept for it, and refuse answers read before now."""
        self.epoch += 1
        for variant in Variant:
            self._kept.pop(AnnotationKey(annotation_id, variant))

    def resume(self) -> None:
        """Announcements are heard (again): start empty, since changes may have been missed."""
        self.clear()
        self.enabled = True

    def suspend(self) -> None:
        """Announcements cannot be heard: serve nothing from here until :meth:`resume`."""
        self.enabled = False
        self.clear()

    def clear(self) -> None:
        self.epoch += 1
        self._kept.clear()

"""What the lookup keeps in the hot tier (proxy/cache/hot.py), and how a copy whose time there is up is read again
without a hit waiting for it.

A copy's time in the tier (``PROXY_HOT_TTL``) ending is not its version going stale. The first hit after it is
still answered from the copy, and starts one read of the store in the background; hits during that read are
answered from the copy too, for at most :data:`proxy.cache.hot.REREAD_GRACE`, and never past the version's own
freshness. What the read finds replaces the copy if it is fresh and the copy is still the one kept (a change heard
meanwhile dropped it, and the read may predate the change); nothing fresh, or a read that fails, and the copy goes,
so that the next request looks the id up itself.

Before, the first requests after a copy's end each read the store and waited for it, and answered without a kept
answer (proxy/answers.py): on a busy replica with Redis, 2-4% of a hit's CPU (docs/performance-log.md, the
nineteenth round).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from proxy.cache import AnnotationKey, Lookup
from proxy.cache.hot import HotTier
from proxy.changes import cancel_and_wait
from proxy.policy import CachePolicy
from proxy.served import Served

log = logging.getLogger("proxy.service")  # the lookup's log: operators read one logger for it


class HotCopies:
    """Puts fresh answers read from the store in the hot tier (:meth:`keep`), and reads a copy again when the tier
    says it is due (it calls the instance with the key and the copy)."""

    def __init__(
        self,
        hot: HotTier[Served],
        *,
        read: Callable[[AnnotationKey], Awaitable[Lookup]],
        fresh: Callable[[Lookup], Served | None],
        policy: CachePolicy,
        clock: Callable[[], float],
    ) -> None:
        self._hot = hot
        self._read = read  # the store's read, failing open (a miss when the store fails)
        self._fresh = fresh
        self._policy = policy
        self._clock = clock
        # One per due copy; one that outlasts its copy's grace may overlap the next copy's (each a store read,
        # bounded as every read is).
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        hot.read_again = self

    def keep(self, key: AnnotationKey, served: Served, epoch: int) -> None:
        """Keep ``served``, read from the store under ``epoch``, for the tier's time or until it is no longer fresh."""
        size, fresh_until = kept_until(served, self._clock(), self._policy)
        self._hot.put(key, served, size=size, fresh_until=fresh_until, epoch=epoch)

    def __call__(self, key: AnnotationKey, copy: object) -> None:
        """The tier's ``copy`` of ``key`` is due: read it again in the background (not once closed)."""
        if self._closed:
            return
        task = asyncio.create_task(self._reread(key, copy), name=f"reread-{key.annotation_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def close(self) -> None:
        """Cancel the reads still running (as the change follower is cancelled: a read may be opening a Redis
        connection), and start no more (at shutdown)."""
        self._closed = True
        await asyncio.gather(*(cancel_and_wait(task) for task in list(self._running)))

    async def _reread(self, key: AnnotationKey, copy: object) -> None:
        try:
            served = self._fresh(await self._read(key))
            if served is not None:
                size, fresh_until = kept_until(served, self._clock(), self._policy)
                self._hot.renew(key, copy, served, size=size, fresh_until=fresh_until)
                return
        except Exception:  # the read fails open; anything else is a bug, logged here rather than never retrieved
            log.exception("reading a hot copy again failed", extra={"annotation_id": key.annotation_id})
        self._hot.forget(key, copy)


def kept_until(served: Served, now: float, policy: CachePolicy) -> tuple[int, float]:
    """The bytes of body a fresh answer read from the store holds, and until when it is fresh.

    A version: until its TTL from when it was fetched. A remembered 404: never past the store's marker, which
    outlives the fetch that saw it by its TTL. A cold id's first version is announced to nobody, so a 404 kept
    longer than its marker would hide it (docs/redis.md).
    """
    entry = served.entry
    if entry is not None:
        return len(entry.body), entry.stored_at + policy.ttl
    seen = served.missing_seen  # None for a deletion's: no moment at all
    return 0, (now if seen is None else min(now, seen)) + policy.negative_ttl

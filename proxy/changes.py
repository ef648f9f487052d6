"""Following the store's announcements of change: what keeps the hot tier coherent and wakes claim waiters.

Every change to the store's view of an annotation that a process may hold a copy of, or wait for, is announced
(Redis pub/sub, see :meth:`proxy.cache.base.AnnotationStore.changes`). The follower drops the hot tier's copy of
each annotation it hears of, and wakes the requests waiting for another replica's fetch of it
(:mod:`proxy.claims`). The hot tier is on only while the announcements are heard; after a reconnection it starts
empty, since what was missed is unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

from proxy.cache import AnnotationStore, Superseded
from proxy.cache.hot import HotTier
from proxy.errors import CacheError
from proxy.served import Served

log = logging.getLogger("proxy.service")  # the lookup's log: operators read one logger for it

# Reconnecting to the store's announcements after a failure: backing off from the first to the second, and back to
# the first only after a subscription that lasted the second (one that fails at once, on every message say, would
# otherwise be retried, and logged, every RETRY_MIN for good).
RETRY_MIN = 0.5
RETRY_MAX = 10.0


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended, asking again while it runs: redis-py swallows a cancellation
    that lands while it opens a connection, and the task would go on (listening, or reading a hot copy again)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.05)


class ChangeFollower:
    def __init__(
        self,
        store: AnnotationStore,
        hot: HotTier[Served],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._monotonic = monotonic
        self._hot = hot
        # Told of each Superseded announcement: the loads in flight for its id (proxy/loads.py), set by the owner.
        self.on_superseded: Callable[[Superseded], None] = lambda superseded: None
        self._sleep = sleep
        # Annotation ids whose change claims' waiters await (the plain and the expanded variant's loads may both
        # wait for one id): the event they wait on, and how many wait.
        self._announced: dict[int, asyncio.Event] = {}
        self._waiting: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self, *, shared: bool = False) -> None:
        """Follow the announcements in the background: the hot tier needs them to be on, and a store ``shared``
        with other processes (claims, changes applied elsewhere) needs them even with the tier off."""
        if (self._hot.ttl > 0 or shared) and self._task is None:
            self._task = asyncio.create_task(self._follow(), name="hot-tier-listener")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def changed(self, annotation_id: int, *, at_most: float) -> None:
        """Until the store announces a change of the annotation, at most ``at_most`` seconds."""
        event = self._announced.setdefault(annotation_id, asyncio.Event())
        self._waiting[annotation_id] = self._waiting.get(annotation_id, 0) + 1
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), at_most)
        finally:
            left = self._waiting.pop(annotation_id) - 1
            if left:  # another still waits, on this event or a later one: it stays to be set
                self._waiting[annotation_id] = left
            else:
                self._announced.pop(annotation_id, None)

    def wake(self, annotation_id: int) -> None:
        """Wake whoever waits in :meth:`changed` for the annotation now: announced, or its claim let go here."""
        announced = self._announced.pop(annotation_id, None)
        if announced is not None:
            announced.set()

    async def _follow(self) -> None:
        """For as long as the service runs; the hot tier is on while the announcements are heard."""
        retry_in = RETRY_MIN
        while True:
            subscribed_at: float | None = None
            try:
                async for change in self._store.changes():
                    if change is None:
                        self._hot.resume()
                        subscribed_at = self._monotonic()
                        log.info(
                            "hot tier on: following the store's changes"
                            if self._hot.ttl > 0
                            else "following the store's changes"
                        )
                    elif isinstance(change, Superseded):
                        self.on_superseded(change)
                    else:
                        self._hot.drop(change)
                        self.wake(change)
            except CacheError as exc:
                if self._hot.enabled:
                    log.warning("hot tier off: cannot follow the store's changes", extra={"error": str(exc)})
            except Exception:  # a bug must not end the following: the tier would stay as it is, on or off, for good
                log.exception("hot tier off: following the store's changes failed")
            self._hot.suspend()
            if subscribed_at is not None and self._monotonic() - subscribed_at >= RETRY_MAX:
                retry_in = RETRY_MIN  # it had been working: a new failure, not the same one again
            await self._sleep(retry_in)
            retry_in = min(retry_in * 2, RETRY_MAX)

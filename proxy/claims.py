"""One fetch per cold annotation across replicas: the first replica claims it in the store; the others wait for
its result (woken by the store's announcement of it, :mod:`proxy.changes`, or by polling) instead of asking
Label Studio too.

A claim lapses after ``ttl`` (longer than any fetch), so a replica that died holding one delays the others by at
most that. Claims are off (``ttl`` 0) with the in-process store: one process, its own single flight is enough.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from proxy.cache import AnnotationKey, Lookup
from proxy.cache.fail_open import FailOpenStore
from proxy.changes import ChangeFollower
from proxy.errors import CacheCircuitOpen, CacheError
from proxy.metrics import Metrics
from proxy.served import Served

# How often a miss waiting for another replica's fetch looks at the store when no announcement arrives.
POLL = 0.05


@dataclass(frozen=True, slots=True)
class Claimed:
    """The outcome of asking: fetch (and ``release`` the claim afterwards, or not), or ``served`` by another."""

    release: bool = False
    served: Served | None = None


class Claims:
    def __init__(
        self,
        cache: FailOpenStore,
        follower: ChangeFollower,
        metrics: Metrics,
        *,
        ttl: float,
        fresh: Callable[[Lookup], Served | None],
    ) -> None:
        self._cache = cache
        self._follower = follower
        self._metrics = metrics
        self._ttl = ttl
        self._fresh = fresh

    async def claim_or_wait(self, key: AnnotationKey) -> Claimed:
        """The answer another replica stored, or leave to fetch: releasing the claim after fetching when it was
        granted, and when asking for it failed (it may have been granted all the same, and releasing a claim this
        process does not hold changes nothing), unless the cache's circuit was open; not when claims are off or
        the holder went quiet past the claim's TTL.

        A grant is followed by one more read: the holder before may have written and let go since this process's
        last read, and its answer is then served (the claim given back) rather than fetched again."""
        if self._ttl <= 0:
            return Claimed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ttl
        while True:
            try:
                granted = await self._cache.store.claim(key, self._ttl)
            except CacheError as exc:
                self._cache.failed("claim", exc)
                return Claimed(release=not isinstance(exc, CacheCircuitOpen))
            if granted:
                # The holder before may have written and let go since this process last read: read once more.
                try:
                    served = self._fresh(await self._cache.read(key))
                except BaseException:  # cancelled (at shutdown): the other replicas need not wait out the TTL
                    await self.release(key)
                    raise
                if served is None:
                    return Claimed(release=True)
                await self.release(key)
                return self._answered(served)
            at_most = min(POLL, max(0.0, deadline - loop.time()))
            await self._follower.changed(key.annotation_id, at_most=at_most)
            served = self._fresh(await self._cache.read(key))
            if served is not None:
                return self._answered(served)
            if loop.time() >= deadline:
                return Claimed()

    def _answered(self, served: Served) -> Claimed:
        """Another replica's fetch answered: a miss here too, counted as coalesced."""
        self._metrics.coalesced_requests.inc()
        return Claimed(served=Served(served.entry, "miss", collapsed=True))

    async def release(self, key: AnnotationKey) -> None:
        """Let the claim go. A load of this process refused beside it (proxy/cache/redis_store.py's ClaimBook)
        asks again now, not at its next poll."""
        try:
            await self._cache.store.release(key)
        except CacheError as exc:  # the claim lapses by itself
            self._cache.failed("claim", exc)
        self._follower.wake(key.annotation_id)

"""A store behind a circuit breaker: a dead or hanging Redis costs a few timeouts, not one per request.

After ``threshold`` consecutive failures every operation fails at once with :class:`CacheError` (which the service
treats as a miss, so requests go to Label Studio) for ``cooldown`` seconds; then one operation probes Redis, and
its success resumes caching by itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from proxy.breaker import CircuitBreaker, State
from proxy.cache.base import AnnotationKey, AnnotationStore, CachedAnnotation, Lookup, Superseded, Variant
from proxy.errors import CacheBusy, CacheCircuitOpen, CacheError

T = TypeVar("T")


def _refused() -> CacheCircuitOpen:
    return CacheCircuitOpen("cache circuit open: recent operations failed")


class CircuitBreakingStore:
    def __init__(self, store: AnnotationStore, breaker: CircuitBreaker) -> None:
        self.name = store.name
        self._store = store
        self._breaker = breaker
        self._reconnected = False  # idle connections dropped since the circuit last opened

    async def _guarded(self, operation: Callable[[], Awaitable[T]]) -> T:
        # A CacheBusy (a slot on the move, no room in the budget, a batch's failure counted once) is no verdict.
        try:
            with self._breaker.guard(_refused, failures=(CacheError,)) as verdict:
                try:
                    return await operation()
                except CacheBusy:
                    verdict.abandoned()
                    raise
        except CacheError:
            if self._breaker.state is State.OPEN and not self._reconnected:
                # Its idle connections may all be dead (a restarted Redis): drop them now, or each would fail
                # once after the recovery, and three of those in a row would open the circuit again.
                self._reconnected = True
                await self._store.reconnect()
            raise
        finally:
            if self._breaker.state is State.CLOSED:
                self._reconnected = False

    async def get(self, key: AnnotationKey) -> Lookup:
        return await self._guarded(lambda: self._store.get(key))

    async def get_or_claim(self, key: AnnotationKey, ttl: float) -> tuple[Lookup, bool]:
        return await self._guarded(lambda: self._store.get_or_claim(key, ttl))

    async def put(self, key: AnnotationKey, entry: CachedAnnotation, ttl: float, *, release: bool = False) -> bool:
        return await self._guarded(lambda: self._store.put(key, entry, ttl, release=release))

    async def put_missing(self, annotation_id: int, ttl: float, *, since: int, release: Variant | None = None) -> bool:
        return await self._guarded(lambda: self._store.put_missing(annotation_id, ttl, since=since, release=release))

    async def invalidate(self, annotation_id: int, version: int, ttl: float) -> str:
        return await self._guarded(lambda: self._store.invalidate(annotation_id, version, ttl))

    async def drop(self, annotation_id: int) -> None:
        await self._guarded(lambda: self._store.drop(annotation_id))

    async def task_deleted(self, task_id: int, ttl: float) -> set[int]:
        return await self._guarded(lambda: self._store.task_deleted(task_id, ttl))

    async def ping(self) -> None:
        await self._guarded(self._store.ping)

    async def claim(self, key: AnnotationKey, ttl: float) -> bool:
        return await self._guarded(lambda: self._store.claim(key, ttl))

    async def release(self, key: AnnotationKey) -> None:
        await self._guarded(lambda: self._store.release(key))

    async def reconnect(self) -> None:
        await self._store.reconnect()

    def changes(self) -> AsyncIterator[int | Superseded | None]:
        return self._store.changes()  # not guarded: it fails on its own, and its caller retries

    async def close(self) -> None:
        await self._store.close()

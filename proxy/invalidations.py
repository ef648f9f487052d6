"""What Label Studio's webhooks and operators' purges tell the cache, applied.

Every method raises :class:`CacheError` (counted as ``invalidate``) when the store could not hear it: the webhook
answers 503 and the purge 503, so that the sender knows the cache may still serve the old version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from proxy.cache import AnnotationKey, CachedAnnotation, Variant
from proxy.cache.fail_open import FailOpenStore
from proxy.cache.hot import HotTier
from proxy.cache.keyspace import FENCE
from proxy.errors import CacheError
from proxy.failures import RecentFailures
from proxy.served import Served

log = logging.getLogger("proxy.service")  # the lookup's log: operators read one logger for it

# How far past this proxy's clock a webhook's updated_at may lie (clocks differ); later ones are bounded to it.
MAX_CLOCK_SKEW = 300.0
# Store operations one webhook runs at once: an event may name tens of thousands of ids (one by one, that is a
# minute on Redis), but it must not take the connection pool from the requests being served meanwhile.
EVENT_CONCURRENCY = 16

T = TypeVar("T")
R = TypeVar("R")

# Starts a background re-fetch of ``key`` (``previous``: the version cached before the change, or None).
Reload = Callable[[AnnotationKey, CachedAnnotation | None, str, str], None]  # key, previous, request id, token


async def for_each(items: Sequence[T], operation: Callable[[T], Awaitable[R]]) -> list[R]:
    """``operation`` on every item, :data:`EVENT_CONCURRENCY` at a time, in order.

    A :class:`CacheError` does not stop the rest: every item is tried, then the first such error is raised, so a
    partly applied event is as complete as the cache allowed and its sender still hears that it failed.
    """
    results: list[R] = []
    failure: CacheError | None = None
    for start in range(0, len(items), EVENT_CONCURRENCY):
        batch = items[start : start + EVENT_CONCURRENCY]
        for outcome in await asyncio.gather(*(operation(item) for item in batch), return_exceptions=True):
            if isinstance(outcome, CacheError):
                failure = failure or outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append(outcome)
    if failure is not None:
        raise failure
    return results


class Invalidations:
    def __init__(
        self,
        cache: FailOpenStore,
        hot: HotTier[Served],
        failures: RecentFailures,
        *,
        reload: Reload,
        reloading: Callable[[AnnotationKey], bool],
        retention: float,
        fence_ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self._cache = cache
        self._store = cache.store
        self._hot = hot
        self._failures = failures
        self._reload = reload
        self._reloading = reloading
        self._retention = retention
        self._fence_ttl = fence_ttl
        self._clock = clock

    def _forget_in_process(self, annotation_id: int) -> None:
        self._hot.drop(annotation_id)
        self._failures.forget(annotation_id)

    async def annotation_changed(self, annotation_id: int, version: int, request_id: str) -> None:
        """The annotation now has ``version``: stop serving older ones and re-fetch what was cached.

        ``version`` comes from a webhook, not from Label Studio's answer: it holds back older versions only for
        ``fence_ttl`` (until Label Studio serves it, which stores it for good), and never further than
        :data:`MAX_CLOCK_SKEW` past this proxy's clock.
        """
        latest_plausible = round((self._clock() + MAX_CLOCK_SKEW) * 1_000_000)
        if version > latest_plausible:
            log.warning(
                "a webhook's updated_at is in the future: bounded by the proxy's clock",
                extra={"annotation_id": annotation_id, "request_id": request_id},
            )
            version = latest_plausible
        with self._cache.counting("invalidate"):
            cached = {variant: await self._store.get(AnnotationKey(annotation_id, variant)) for variant in Variant}
            token = await self._store.invalidate(annotation_id, version, self._fence_ttl)
        self._forget_in_process(annotation_id)
        for variant, entry in cached.items():
            key = AnnotationKey(annotation_id, variant)
            previous = entry if isinstance(entry, CachedAnnotation) else None
            if previous is not None or self._reloading(key):
                # A new load even if one is in flight: that one may have left before the change, and requests
                # from now on must not join it.
                self._reload(key, previous, request_id, token)

    async def annotation_deleted(self, annotation_id: int) -> None:
        """Answer 404 from now on, and let no fetch that started earlier store the annotation again."""
        with self._cache.counting("invalidate"):
            await self._store.put_missing(annotation_id, self._retention, since=FENCE)
        self._forget_in_process(annotation_id)

    async def task_deleted(self, task_id: int) -> int:
        """Label Studio deleted the task and, silently, its annotations. Returns how many were cached. A fetch of
        one of them in flight (not in the task's index yet) is refused its write, as long as a fetch may take."""
        with self._cache.counting("invalidate"):
            annotation_ids = await self._store.task_deleted(task_id, self._fence_ttl)
        await for_each(sorted(annotation_ids), self.annotation_deleted)
        return len(annotation_ids)

    async def purge(self, annotation_id: int) -> None:
        """Forget everything cached about the annotation; the next request asks Label Studio."""
        with self._cache.counting("invalidate"):
            await self._store.drop(annotation_id)
        self._forget_in_process(annotation_id)

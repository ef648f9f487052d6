"""The store as the lookup uses it: failing open.

A cache that fails must never fail a request. Every store call the lookup makes on its way to an answer goes
through here: a :class:`CacheError` is counted (``annotation_proxy_cache_errors_total{operation}``), logged at
most once per :data:`LOG_INTERVAL` seconds, and turned into a miss (a read) or a skipped write. What webhooks and
purges ask of the store must not fail silently: :meth:`FailOpenStore.counting` counts and re-raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from proxy.cache.base import AnnotationKey, AnnotationStore, CachedAnnotation, Lookup, Variant
from proxy.errors import CacheError
from proxy.metrics import CacheOperation, Metrics

log = logging.getLogger("proxy.service")  # the lookup's log: operators read one logger for it

# At most one log line per this many seconds about a failing cache (every failure is still counted).
LOG_INTERVAL = 10.0


class FailOpenStore:
    def __init__(
        self, store: AnnotationStore, metrics: Metrics, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self._metrics = metrics
        self._monotonic = monotonic
        self._last_log = -LOG_INTERVAL

    async def read(self, key: AnnotationKey) -> Lookup:
        """What the store holds for ``key``; None (a miss) when it fails."""
        try:
            return await self.store.get(key)
        except CacheError as exc:
            self.failed("get", exc)
            return None

    async def read_or_claim(self, key: AnnotationKey, ttl: float) -> tuple[Lookup, bool]:
        """What the store holds for ``key``, and whether this request now holds the claim of its fetch (nothing
        cached, claim granted); a miss without a claim when the store fails."""
        try:
            return await self.store.get_or_claim(key, ttl)
        except CacheError as exc:
            self.failed("get", exc)
            return None, False

    async def write(self, key: AnnotationKey, entry: CachedAnnotation, ttl: float, *, release: bool = False) -> bool:
        """Store ``entry`` (and give up the claim on ``key`` with ``release``); False when the store refused it (a
        newer version is known) or failed."""
        try:
            return await self.store.put(key, entry, ttl, release=release)
        except CacheError as exc:
            self.failed("put", exc)
            return False

    async def write_missing(
        self, annotation_id: int, ttl: float, *, since: int, release: Variant | None = None
    ) -> bool:
        """Remember a 404 seen by a fetch that began at ``since``; False when refused or failed."""
        try:
            return await self.store.put_missing(annotation_id, ttl, since=since, release=release)
        except CacheError as exc:
            self.failed("put_missing", exc)
            return False

    @contextmanager
    def counting(self, operation: CacheOperation) -> Iterator[None]:
        """Count a failure of the store calls inside, and let it through: its caller must know."""
        try:
            yield
        except CacheError:
            self._metrics.cache_errors.labels(operation=operation).inc()
            raise

    def failed(self, operation: CacheOperation, exc: CacheError) -> None:
        """Count one failure; log it unless another was logged less than LOG_INTERVAL ago."""
        self._metrics.cache_errors.labels(operation=operation).inc()
        now = self._monotonic()
        if now - self._last_log >= LOG_INTERVAL:
            self._last_log = now
            log.warning(
                "cache unavailable, serving from Label Studio",
                extra={"operation": operation, "error": str(exc)},
            )

"""The annotation lookup: cache, coalesce, fetch, validate, store.

This is the proxy's one piece of business logic, free of HTTP: :mod:`proxy.routes` parses the request, calls
:meth:`AnnotationService.lookup` and writes what it returns. Collaborators (the store, the upstream client,
metrics) come in through the constructor, so tests build it with whatever parts they need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from proxy.cache import MISSING, AnnotationKey, AnnotationStore, CachedAnnotation, Lookup, Variant
from proxy.errors import CacheError, InvalidUpstreamBody, ProxyError
from proxy.metrics import Metrics
from proxy.models import validate_annotation, version_of
from proxy.upstream import UpstreamReply

log = logging.getLogger("proxy.service")

CacheResult = Literal["hit", "miss", "stale", "negative_hit"]

CACHE_NAME = "annotation-proxy"

# At most one log line per this many seconds about a failing cache (every failure is still counted).
CACHE_ERROR_LOG_INTERVAL = 10.0


class AnnotationSource(Protocol):
    """Where annotations come from on a miss: :class:`proxy.upstream.LabelStudioClient`."""

    async def fetch_annotation(self, annotation_id: int, *, expand: bool, request_id: str) -> UpstreamReply: ...


def cache_status(
    *,
    hit: bool = False,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
) -> str:
    """A ``Cache-Status`` header value (RFC 9211) for this cache."""
    params = [CACHE_NAME]
    if hit:
        params.append("hit")
    else:
        params.append("fwd=miss")
        if fwd_status is not None:
            params.append(f"fwd-status={fwd_status}")
        if stored:
            params.append("stored")
        if collapsed:
            params.append("collapsed")
    if detail:
        params.append(f"detail={detail}")
    return "; ".join(params)


@dataclass(frozen=True, slots=True)
class Served:
    """The answer to one lookup: a cached version, or ``None`` for a 404, and how the cache produced it."""

    entry: CachedAnnotation | None
    result: CacheResult
    stored: bool = False  # a miss whose answer the cache now holds
    collapsed: bool = False  # this request waited for another request's fetch

    @property
    def cache_status(self) -> str:
        if self.result == "hit":
            return cache_status(hit=True)
        if self.result == "negative_hit":
            return cache_status(hit=True, detail="negative")
        return cache_status(
            fwd_status=404 if self.entry is None else 200,
            stored=self.stored,
            collapsed=self.collapsed,
        )


class AnnotationService:
    def __init__(
        self,
        store: AnnotationStore,
        source: AnnotationSource,
        metrics: Metrics,
        *,
        cache_ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._source = source
        self._metrics = metrics
        self._cache_ttl = cache_ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._inflight: dict[AnnotationKey, asyncio.Task[Served]] = {}
        self._last_cache_error_log = -CACHE_ERROR_LOG_INTERVAL

    async def lookup(self, annotation_id: int, *, expand: bool, request_id: str) -> Served:
        """Serve one annotation request. Raises :class:`ProxyError` for answers other than 200 and 404."""
        key = AnnotationKey(annotation_id, Variant.EXPANDED if expand else Variant.PLAIN)
        served = self._from_cache(await self._read(key))
        if served is None:
            served = await self._join_or_load(key, request_id)
        self._metrics.cache_requests.labels(result=served.result).inc()
        return served

    async def close(self) -> None:
        """Cancel loads still in flight (at shutdown, after the server stopped taking requests)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Coalescing: one load per key at a time; everyone else waits for it and shares its result or failure.

    async def _join_or_load(self, key: AnnotationKey, request_id: str) -> Served:
        task = self._inflight.get(key)
        if task is not None:
            self._metrics.coalesced_requests.inc()
            try:
                served = await asyncio.shield(task)
            except ProxyError:
                self._metrics.cache_requests.labels(result="miss").inc()
                raise
            # This request did not fetch: say that it waited for one that did.
            return replace(served, collapsed=True) if served.result == "miss" else served

        task = asyncio.create_task(self._load(key, request_id), name=f"load-{key.annotation_id}")
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._load_finished(key, done))
        try:
            # Shielded: a caller that goes away does not cancel the load others are waiting for.
            return await asyncio.shield(task)
        except ProxyError:
            self._metrics.cache_requests.labels(result="miss").inc()
            raise

    def _load_finished(self, key: AnnotationKey, task: asyncio.Task[Served]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a load whose callers all left logs no warning

    async def _load(self, key: AnnotationKey, request_id: str) -> Served:
        # Read again: a load that finished between this request's miss and now has stored its result.
        served = self._from_cache(await self._read(key))
        if served is not None:
            return served
        expand = key.variant is Variant.EXPANDED
        try:
            reply = await self._source.fetch_annotation(key.annotation_id, expand=expand, request_id=request_id)
            if reply.status == 404:
                stored = await self._remember_missing(key.annotation_id)
                return Served(None, "miss", stored=stored)
            annotation = validate_annotation(reply.body, annotation_id=key.annotation_id, expand=expand)
        except InvalidUpstreamBody as exc:  # from validation, or a body past PROXY_MAX_BODY_BYTES
            self._metrics.validation_failures.inc()
            log.warning(
                "rejected an invalid upstream body",
                extra={
                    "annotation_id": key.annotation_id,
                    "reason": exc.detail,
                    "request_id": request_id,
                },
            )
            raise
        entry = CachedAnnotation(
            annotation_id=key.annotation_id,
            version=version_of(annotation.updated_at),
            stored_at=self._clock(),
            body=reply.body,
            project=annotation.project,
            task=annotation.task,
        )
        stored = await self._remember(key, entry)
        return Served(entry, "miss", stored=stored)

    # The cache fails open: an error is counted, logged (throttled) and treated as a miss or a skipped write.

    def _from_cache(self, cached: Lookup) -> Served | None:
        if cached is None:
            return None
        if cached is MISSING:
            return Served(None, "negative_hit")
        return Served(cached, "hit")

    async def _read(self, key: AnnotationKey) -> Lookup:
        try:
            return await self._store.get(key)
        except CacheError as exc:
            self._cache_failed("get", exc)
            return None

    async def _remember(self, key: AnnotationKey, entry: CachedAnnotation) -> bool:
        try:
            return await self._store.put(key, entry, self._cache_ttl)
        except CacheError as exc:
            self._cache_failed("put", exc)
            return False

    async def _remember_missing(self, annotation_id: int) -> bool:
        try:
            await self._store.put_missing(annotation_id, self._negative_ttl)
        except CacheError as exc:
            self._cache_failed("put_missing", exc)
            return False
        return self._negative_ttl > 0

    def _cache_failed(self, operation: str, exc: CacheError) -> None:
        self._metrics.cache_errors.labels(operation=operation).inc()
        now = time.monotonic()
        if now - self._last_cache_error_log >= CACHE_ERROR_LOG_INTERVAL:
            self._last_cache_error_log = now
            log.warning(
                "cache unavailable, serving from Label Studio",
                extra={"operation": operation, "error": str(exc)},
            )


__all__ = ["AnnotationService", "AnnotationSource", "CacheResult", "Served", "cache_status"]

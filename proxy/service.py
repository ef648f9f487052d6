"""The annotation lookup: cache, coalesce, fetch, validate, store.

This is the proxy's one piece of business logic, free of HTTP: :mod:`proxy.routes` parses the request, calls
:meth:`AnnotationService.lookup` and writes what it returns. Collaborators (the store, the upstream client,
metrics) come in through the constructor, so tests build it with whatever parts they need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar

from proxy.cache import MISSING, AnnotationKey, AnnotationStore, CachedAnnotation, Lookup, Variant
from proxy.cache.keyspace import FENCE
from proxy.created_ago import find_created_ago
from proxy.errors import (
    AnnotationNotFound,
    CacheCircuitOpen,
    CacheError,
    InvalidUpstreamBody,
    ProxyError,
    UpstreamBadStatus,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.failures import RecentFailures
from proxy.freshness import Freshness, entity_tag, freshness
from proxy.hot import HotTier
from proxy.metrics import Metrics
from proxy.models import epoch_micros, validate_annotation
from proxy.upstream import UpstreamReply

log = logging.getLogger("proxy.service")

# Label Studio failures that a cached version may hide (stale-if-error). A 404, an invalid body or rejected
# credentials are answers, not failures: they are never hidden.
UNAVAILABLE = (UpstreamTimeout, UpstreamUnavailable, UpstreamBadStatus)
# How far past this proxy's clock a webhook's updated_at may lie (clocks differ); later ones are bounded to it.
MAX_CLOCK_SKEW = 300.0

# Answers that say Label Studio as a whole is unwell (a gateway, an overload), not one annotation.
GATEWAY = frozenset({502, 503, 504})

CacheResult = Literal["hit", "miss", "stale", "stale_if_error", "negative_hit"]

CACHE_NAME = "annotation-proxy"

# At most one log line per this many seconds about a failing cache (every failure is still counted).
CACHE_ERROR_LOG_INTERVAL = 10.0

# Reconnecting to the store's announcements after a failure: backing off from the first to the second.
HOT_LISTEN_RETRY_MIN = 0.5
HOT_LISTEN_RETRY_MAX = 10.0

# How often a miss waiting for another replica's fetch looks at the store when no announcement arrives.
CLAIM_POLL = 0.05

# Store operations one webhook runs at once: an event may name tens of thousands of ids (one by one, that is a
# minute on Redis), but it must not take the connection pool from the requests being served meanwhile.
EVENT_CONCURRENCY = 16

T = TypeVar("T")
R = TypeVar("R")


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended, asking again while it runs: redis-py swallows a cancellation
    that lands while it opens a connection, and the task would go on listening."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.05)


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


HIT = cache_status(hit=True)
NEGATIVE_HIT = cache_status(hit=True, detail="negative")
STALE = cache_status(hit=True, detail="stale")
STALE_IF_ERROR = cache_status(hit=True, detail="stale-if-error")


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
            return HIT
        if self.result == "negative_hit":
            return NEGATIVE_HIT
        if self.result == "stale":
            return STALE
        if self.result == "stale_if_error":
            return STALE_IF_ERROR
        return cache_status(
            fwd_status=404 if self.entry is None else 200,
            stored=self.stored,
            collapsed=self.collapsed,
        )


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long cached answers live (seconds)."""

    ttl: float  # a version is fresh this long after it was fetched
    stale_ttl: float  # then served stale (while one background fetch revalidates it) this much longer
    negative_ttl: float  # a Label Studio 404 is remembered this long
    stale_if_error_ttl: float = 0.0  # while Label Studio fails, a version this young is served instead of an error
    claim_ttl: float = 0.0  # > 0: a miss claims its fetch across replicas for this long (see AnnotationStore.claim)
    # A version that only a webhook vouches for holds back older ones this long: as long as a fetch that began
    # before the webhook can take. Label Studio confirms it by serving it (the fetch stores it for `retention`);
    # a version it never serves (a forged or far-future updated_at, a clock that went back) stops blocking then.
    fence_ttl: float = 15.0

    @property
    def retention(self) -> float:
        """How long the store keeps a version (and a deleted annotation's tombstone)."""
        return max(self.ttl + self.stale_ttl, self.stale_if_error_ttl)


class AnnotationService:
    def __init__(
        self,
        store: AnnotationStore,
        source: AnnotationSource,
        metrics: Metrics,
        policy: CachePolicy,
        *,
        clock: Callable[[], float] = time.time,
        hot: HotTier | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._metrics = metrics
        self._policy = policy
        self._clock = clock
        self.hot = hot if hot is not None else HotTier(ttl=0, max_bytes=0, clock=clock)
        self._failures = RecentFailures(clock=clock)
        self._listener: asyncio.Task[None] | None = None
        self._announced: dict[int, asyncio.Event] = {}  # annotation ids whose change a claim's waiters await
        self._inflight: dict[AnnotationKey, asyncio.Task[Served]] = {}  # the load a request for a key joins
        self._loads: set[asyncio.Task[Served]] = set()  # every load running, joinable or superseded
        self._last_cache_error_log = -CACHE_ERROR_LOG_INTERVAL

    def start(self) -> None:
        """Start listening to the store's announcements of change, which the hot tier needs to be on."""
        if self.hot.ttl > 0 and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="hot-tier-listener")

    async def lookup(
        self, annotation_id: int, *, expand: bool, request_id: str, allowed: Callable[[int | None], bool] | None = None
    ) -> Served:
        """Serve one annotation request. Raises :class:`ProxyError` for answers other than 200 and 404.

        ``allowed`` (a scoped client key) says which projects the caller may read: an annotation the cache knows
        to be of another project is :class:`AnnotationNotFound` at once, without asking Label Studio, so a key
        cannot make the proxy fetch (or revalidate) what it may not read. The caller still checks the project
        of what a fetch brings.
        """
        key = AnnotationKey(annotation_id, Variant.EXPANDED if expand else Variant.PLAIN)
        served = self.hot.get(key)
        if served is not None:
            self._metrics.cache_request(served.result)
            return served
        epoch = self.hot.epoch
        cached = await self._read(key)
        if allowed is not None and isinstance(cached, CachedAnnotation) and not allowed(cached.project):
            self._metrics.cache_request("hit")  # the cache answered: no fetch
            raise AnnotationNotFound()
        served = self._fresh(cached)
        if served is not None:
            self._keep_hot(key, served, epoch)
        if served is None and isinstance(cached, CachedAnnotation) and self._is_stale(cached):
            self._revalidate(key, cached, request_id)
            served = Served(cached, "stale")
        try:
            if served is None:
                failure = self._failures.recall(annotation_id)
                if failure is not None:
                    raise failure
                served = await self._join_or_load(key, request_id)
        except UNAVAILABLE as exc:
            served = self._stale_if_error(cached, exc)
            if served is None:
                self._metrics.cache_request("miss")
                raise
        except ProxyError:  # the cache missed, and so did Label Studio
            self._metrics.cache_request("miss")
            raise
        self._metrics.cache_request(served.result)
        return served

    # What Label Studio's webhooks (and operators) tell us. These raise CacheError: the caller must know
    # that the cache did not hear it.

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
        with self._counting_cache_errors("invalidate"):
            cached = {variant: await self._store.get(AnnotationKey(annotation_id, variant)) for variant in Variant}
            await self._store.invalidate(annotation_id, version, self._policy.fence_ttl)
        self.hot.drop(annotation_id)
        self._failures.forget(annotation_id)
        for variant, entry in cached.items():
            key = AnnotationKey(annotation_id, variant)
            previous = entry if isinstance(entry, CachedAnnotation) else None
            if previous is not None or key in self._inflight:
                # A new load even if one is in flight: that one may have left before the change, and requests
                # from now on must not join it.
                self._start_load(key, request_id, previous=previous)

    async def annotation_deleted(self, annotation_id: int) -> None:
        """Answer 404 from now on, and let no fetch that started earlier store the annotation again."""
        with self._counting_cache_errors("invalidate"):
            await self._store.put_missing(annotation_id, self._policy.retention, since=FENCE)
        self.hot.drop(annotation_id)
        self._failures.forget(annotation_id)

    async def task_deleted(self, task_id: int) -> int:
        """Label Studio deleted the task and, silently, its annotations. Returns how many were cached."""
        with self._counting_cache_errors("invalidate"):
            annotation_ids = await self._store.annotations_of_task(task_id)
        await for_each(sorted(annotation_ids), self.annotation_deleted)
        with self._counting_cache_errors("invalidate"):
            await self._store.forget_task(task_id)
        return len(annotation_ids)

    async def purge(self, annotation_id: int) -> None:
        """Forget everything cached about the annotation; the next request asks Label Studio."""
        with self._counting_cache_errors("invalidate"):
            await self._store.drop(annotation_id)
        self.hot.drop(annotation_id)
        self._failures.forget(annotation_id)

    async def close(self) -> None:
        """Cancel loads still in flight (at shutdown, after the server stopped taking requests)."""
        tasks = list(self._loads)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            await cancel_and_wait(self._listener)

    # Coalescing: one load per key at a time; everyone else waits for it and shares its result or failure.

    async def _join_or_load(self, key: AnnotationKey, request_id: str) -> Served:
        task = self._inflight.get(key)
        joined = task is not None
        if task is None:
            task = self._start_load(key, request_id, check_cache=True)
        else:
            self._metrics.coalesced_requests.inc()
        # Shielded: a caller that goes away does not cancel the load others are waiting for.
        served = await asyncio.shield(task)
        # A request that waited for another's fetch says so.
        return replace(served, collapsed=True) if joined and served.result == "miss" else served

    def _revalidate(self, key: AnnotationKey, stale: CachedAnnotation, request_id: str) -> None:
        """Refresh a stale version in the background, unless a load for it is already under way."""
        if key not in self._inflight:
            self._start_load(key, request_id, previous=stale)

    def _start_load(
        self,
        key: AnnotationKey,
        request_id: str,
        *,
        check_cache: bool = False,
        previous: CachedAnnotation | None = None,
    ) -> asyncio.Task[Served]:
        """Start fetching ``key`` and make it the load that later requests for ``key`` join.

        ``previous`` marks a background revalidation of that cached version: its outcome is counted and a
        failure logged here, since no caller may be waiting to see it.
        """
        task = asyncio.create_task(self._load(key, request_id, check_cache=check_cache), name=f"load-{key}")
        self._inflight[key] = task
        self._loads.add(task)
        task.add_done_callback(lambda done: self._load_finished(key, done, previous, request_id))
        return task

    def _load_finished(
        self, key: AnnotationKey, task: asyncio.Task[Served], previous: CachedAnnotation | None, request_id: str
    ) -> None:
        self._loads.discard(task)
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so a load whose callers all left logs no warning
        if previous is None:
            return
        if error is not None:
            outcome = "error"
            log.warning(
                "background revalidation failed",
                extra={"annotation_id": key.annotation_id, "error": str(error), "request_id": request_id},
            )
        else:
            entry = task.result().entry
            if entry is None:
                outcome = "not_found"
            elif entry.etag == previous.etag and entry.version == previous.version:
                outcome = "unchanged"
            else:
                outcome = "updated"
        self._metrics.revalidations.labels(outcome=outcome).inc()

    async def _load(self, key: AnnotationKey, request_id: str, *, check_cache: bool) -> Served:
        release = False
        if check_cache:
            # Read again: a load that finished between this request's miss and now has stored its result.
            served = self._fresh(await self._read(key))
            if served is not None:
                return served
            release, served = await self._claim_or_wait(key)
            if served is not None:
                return served
        try:
            return await self._fetch(key, request_id)
        finally:
            if release:
                await self._release(key)

    async def _fetch(self, key: AnnotationKey, request_id: str) -> Served:
        expand = key.variant is Variant.EXPANDED
        try:
            started = self._clock()  # what Label Studio answers is at least this recent
            reply = await self._source.fetch_annotation(key.annotation_id, expand=expand, request_id=request_id)
            if reply.status == 404:
                stored = await self._remember_missing(key.annotation_id, since=round(started * 1_000_000))
                return Served(None, "miss", stored=stored)
            try:
                annotation = validate_annotation(reply.body, annotation_id=key.annotation_id, expand=expand)
            except BaseException:
                reply.release()
                raise
        except UpstreamBadStatus as exc:
            if exc.upstream_status is not None and exc.upstream_status >= 500 and exc.upstream_status not in GATEWAY:
                self._failures.remember(key.annotation_id, exc)  # this id fails, not Label Studio as a whole
            raise
        except InvalidUpstreamBody as exc:  # from validation, or a body past PROXY_MAX_BODY_BYTES
            self._metrics.validation_failures.inc()
            log.warning(
                "rejected an invalid upstream body",
                extra={"annotation_id": key.annotation_id, "reason": exc.detail, "request_id": request_id},
            )
            raise
        span = find_created_ago(reply.body)
        entry = CachedAnnotation(
            annotation_id=key.annotation_id,
            version=epoch_micros(annotation.updated_at),
            stored_at=started,
            body=reply.body,
            project=annotation.project,
            task=annotation.task,
            etag=entity_tag(reply.body, span),
            created_at=epoch_micros(annotation.created_at),
            created_ago_span=span,
        )
        try:
            stored = await self._remember(key, entry)  # encoding it for the store copies it once more
        finally:
            reply.release()  # parsed, checked and stored: its share of the memory budget goes back
        return Served(entry, "miss", stored=stored)

    # One fetch per key across replicas: the first claims it in the store; the others wait for its result.

    async def _claim_or_wait(self, key: AnnotationKey) -> tuple[bool, Served | None]:
        """(False, the answer another replica stored), or None and whether to release the claim after fetching:
        True when it was granted, and when asking for it failed (it may have been granted all the same, and
        releasing a claim this process does not hold changes nothing), unless the cache's circuit was open; False
        when claims are off or the holder went quiet past the claim's TTL."""
        ttl = self._policy.claim_ttl
        if ttl <= 0:
            return False, None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ttl
        while True:
            try:
                if await self._store.claim(key, ttl):
                    return True, None
            except CacheError as exc:
                self._cache_failed("claim", exc)
                return not isinstance(exc, CacheCircuitOpen), None
            await self._changed(key.annotation_id, at_most=min(CLAIM_POLL, max(0.0, deadline - loop.time())))
            served = self._fresh(await self._read(key))
            if served is not None:  # another replica's fetch: a miss here too, answered by that fetch
                self._metrics.coalesced_requests.inc()
                return False, Served(served.entry, "miss", collapsed=True)
            if loop.time() >= deadline:
                return False, None

    async def _changed(self, annotation_id: int, *, at_most: float) -> None:
        """Until the store announces a change of the annotation (heard by the listener), at most ``at_most`` s."""
        event = self._announced.setdefault(annotation_id, asyncio.Event())
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), at_most)
        finally:
            if self._announced.get(annotation_id) is event:
                del self._announced[annotation_id]

    async def _release(self, key: AnnotationKey) -> None:
        try:
            await self._store.release(key)
        except CacheError as exc:  # the claim lapses by itself
            self._cache_failed("claim", exc)

    def _stale_if_error(self, cached: Lookup, error: UpstreamError) -> Served | None:
        """The last validated version, in place of an error, if it is young enough."""
        if not isinstance(cached, CachedAnnotation):
            return None
        if self._clock() - cached.stored_at >= self._policy.stale_if_error_ttl:
            return None
        log.warning(
            "Label Studio failed: serving the cached version",
            extra={
                "annotation_id": cached.annotation_id,
                "error": error.detail,
                "age_s": self._clock() - cached.stored_at,
            },
        )
        return Served(cached, "stale_if_error")

    def _fresh(self, cached: Lookup) -> Served | None:
        """A fresh version or a remembered 404, ready to serve; None for anything that needs Label Studio."""
        if cached is MISSING:
            return Served(None, "negative_hit")
        if isinstance(cached, CachedAnnotation) and self._state(cached) is Freshness.FRESH:
            return Served(cached, "hit")
        return None

    def _state(self, entry: CachedAnnotation) -> Freshness:
        policy = self._policy
        return freshness(entry, now=self._clock(), ttl=policy.ttl, stale_ttl=policy.stale_ttl)

    def _is_stale(self, entry: CachedAnnotation) -> bool:
        return self._state(entry) is Freshness.STALE

    # The cache fails open: an error is counted, logged (throttled) and treated as a miss or a skipped write.

    async def _read(self, key: AnnotationKey) -> Lookup:
        try:
            return await self._store.get(key)
        except CacheError as exc:
            self._cache_failed("get", exc)
            return None

    async def _remember(self, key: AnnotationKey, entry: CachedAnnotation) -> bool:
        try:
            stored = await self._store.put(key, entry, self._policy.retention)
        except CacheError as exc:
            self._cache_failed("put", exc)
            return False
        if stored:
            self.hot.drop(key.annotation_id)
        return stored

    async def _remember_missing(self, annotation_id: int, *, since: int) -> bool:
        try:
            hidden = await self._store.put_missing(annotation_id, self._policy.negative_ttl, since=since)
        except CacheError as exc:
            self._cache_failed("put_missing", exc)
            return False
        if hidden:
            self.hot.drop(annotation_id)
        return hidden and self._policy.negative_ttl > 0

    # The hot tier (proxy/hot.py): fresh answers read from the store, kept in process, dropped on any change.

    def _keep_hot(self, key: AnnotationKey, served: Served, epoch: int) -> None:
        if served.entry is not None:
            fresh_until = served.entry.stored_at + self._policy.ttl
        else:  # a remembered 404: how long it has left is the store's to know; at most its whole TTL
            fresh_until = self._clock() + self._policy.negative_ttl
        self.hot.put(key, served, fresh_until=fresh_until, epoch=epoch)

    async def _listen(self) -> None:
        """Follow the store's announcements for as long as the service runs; the hot tier is on while heard."""
        retry_in = HOT_LISTEN_RETRY_MIN
        while True:
            try:
                async for change in self._store.changes():
                    if change is None:
                        self.hot.resume()
                        retry_in = HOT_LISTEN_RETRY_MIN
                        log.info("hot tier on: following the store's changes")
                    else:
                        self.hot.drop(change)
                        announced = self._announced.pop(change, None)
                        if announced is not None:
                            announced.set()
            except CacheError as exc:
                if self.hot.enabled:
                    log.warning("hot tier off: cannot follow the store's changes", extra={"error": str(exc)})
            self.hot.suspend()
            await asyncio.sleep(retry_in)
            retry_in = min(retry_in * 2, HOT_LISTEN_RETRY_MAX)

    @contextmanager
    def _counting_cache_errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except CacheError:
            self._metrics.cache_errors.labels(operation=operation).inc()
            raise

    def _cache_failed(self, operation: str, exc: CacheError) -> None:
        self._metrics.cache_errors.labels(operation=operation).inc()
        now = time.monotonic()
        if now - self._last_cache_error_log >= CACHE_ERROR_LOG_INTERVAL:
            self._last_cache_error_log = now
            log.warning(
                "cache unavailable, serving from Label Studio",
                extra={"operation": operation, "error": str(exc)},
            )


__all__ = ["AnnotationService", "AnnotationSource", "CachePolicy", "CacheResult", "Served", "cache_status"]

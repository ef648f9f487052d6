"""Loads: what fetches an annotation, one per key at a time in this process (:mod:`proxy.singleflight`) and one
across replicas (:mod:`proxy.claims`); background revalidations of stale versions and re-fetches after a change
are loads too, counted by outcome when they end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from proxy.cache import AnnotationKey, CachedAnnotation, Lookup, Superseded, Variant
from proxy.cache.fail_open import FailOpenStore
from proxy.claims import Claims
from proxy.fair_slots import Parties
from proxy.fetcher import Fetcher
from proxy.metrics import Metrics, RevalidationOutcome
from proxy.served import Served
from proxy.singleflight import SingleFlight

log = logging.getLogger("proxy.service")  # the lookup's log: operators read one logger for it


class Loads:
    def __init__(
        self,
        cache: FailOpenStore,
        claims: Claims,
        fetcher: Fetcher,
        metrics: Metrics,
        *,
        fresh: Callable[[Lookup], Served | None],
    ) -> None:
        self._cache = cache
        self._claims = claims
        self._fetcher = fetcher
        self._metrics = metrics
        self._fresh = fresh
        self._flights: SingleFlight[AnnotationKey, Served] = SingleFlight()
        # Fetches a request's Cache-Control forced (proxy/directives.py): one per key in flight, apart from loads.
        self._forced: SingleFlight[AnnotationKey, Served] = SingleFlight()
        # Reloads started here after a change applied here, with its announcement's token (:meth:`superseded`).
        self._reloads: dict[AnnotationKey, tuple[asyncio.Task[Served], str]] = {}
        self._parties = Parties()  # whose turns at Label Studio each load takes: its joiners' too (fair_slots.py)

    def running(self, key: AnnotationKey) -> bool:
        """Whether a load that requests for ``key`` would join is in flight."""
        return key in self._flights

    async def close(self) -> None:
        await self._flights.close()
        await self._forced.close()

    async def join_or_load(
        self, key: AnnotationKey, request_id: str, *, store: bool = True, claimed: bool = False
    ) -> Served:
        """Join the load in flight for ``key``, or start one that checks the cache again first (storing what it
        fetches unless ``store`` is false, no-store), or fetches at once if the read ``claimed`` it across replicas."""
        task = self._flights.joinable(key)
        joined = task is not None
        if task is None:
            task = self._start_load(key, request_id, check_cache=not claimed, store=store, claimed=claimed)
        elif claimed:  # granted beside a load that holds none (the store grants it once per process): let it go
            await self._claims.release(key)
        return await self._wait(task, joined)

    async def refresh(self, key: AnnotationKey, request_id: str, *, store: bool = True) -> Served:
        """Fetch ``key`` from Label Studio whatever the cache holds, joining such a fetch in flight (a burst of
        ``no-cache`` requests makes one upstream request), stored or not as the request that started it said."""
        task = self._forced.joinable(key)
        joined = task is not None
        if task is None:
            fetch = self._fetcher.fetch(key, request_id, store=store)
            start = partial(self._forced.start, key, fetch, name=f"refresh-{key}", finished=_retrieve)
            task = self._parties.start(start)
        return await self._wait(task, joined)

    async def _wait(self, task: asyncio.Task[Served], joined: bool) -> Served:
        if joined:
            self._metrics.coalesced_requests.inc()
            self._parties.join(task)
        served = await asyncio.shield(task)  # a caller that goes away does not cancel the load others wait for
        if joined and served.result == "miss":  # waited for another's fetch, which stored it: says so
            return replace(served, collapsed=True, stored=False)
        return served

    def revalidate(self, key: AnnotationKey, stale: CachedAnnotation, request_id: str) -> None:
        """Refresh a stale version in the background, unless a load for it is already under way."""
        if key not in self._flights:
            self._start_load(key, request_id, previous=stale)

    def reload(self, key: AnnotationKey, previous: CachedAnnotation | None, request_id: str, token: str = "") -> None:
        """A change was applied here (``token``: its announcement's, AnnotationStore.invalidate): a new load that
        later requests join, even if one is in flight."""
        task = self._start_load(key, request_id, previous=previous)
        self._reloads[key] = task, token
        task.add_done_callback(
            lambda done: self._reloads.pop(key) if self._reloads.get(key, (None,))[0] is done else None
        )

    def superseded(self, change: Superseded) -> None:
        """A process announced that the annotation moved past what was cached: requests from now on join no load
        of it in flight, which may have left before the change, but start one. Not a reload this process started
        after it had applied that change, or a later one, itself: its announcement's token is no earlier."""
        for variant in Variant:
            key = AnnotationKey(change.annotation_id, variant)
            task, token = self._reloads.get(key, (None, ""))
            if task is None or self._flights.joinable(key) is not task or not _no_earlier(token, change.token):
                self._flights.detach(key)
            self._forced.detach(key)

    def _start_load(
        self,
        key: AnnotationKey,
        request_id: str,
        *,
        check_cache: bool = False,
        store: bool = True,
        claimed: bool = False,
        previous: CachedAnnotation | None = None,
    ) -> asyncio.Task[Served]:
        """Start fetching ``key`` and make it the load that later requests for ``key`` join. ``previous`` marks a
        background revalidation of that version: its outcome counted, a failure logged (no caller may see it)."""
        load = self._load(key, request_id, check_cache=check_cache, store=store, claimed=claimed)
        finished = partial(self._load_finished, key, previous=previous, request_id=request_id)
        name = f"load-{key.annotation_id}"  # not the key's repr: a few us a miss
        return self._parties.start(partial(self._flights.start, key, load, name=name, finished=finished))

    def _load_finished(
        self, key: AnnotationKey, task: asyncio.Task[Served], *, previous: CachedAnnotation | None, request_id: str
    ) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so a load whose callers all left logs no warning
        if previous is None:
            return
        outcome: RevalidationOutcome
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

    async def _load(
        self, key: AnnotationKey, request_id: str, *, check_cache: bool, store: bool, claimed: bool = False
    ) -> Served:
        release = claimed
        if check_cache:
            # Read again: a load that finished between this request's miss and now has stored its result.
            served = self._fresh(await self._cache.read(key))
            if served is not None:
                return served
        if check_cache and store:  # a fetch that stores nothing has no result for other replicas to wait for
            claim = await self._claims.claim_or_wait(key)
            if claim.served is not None:
                return claim.served
            release = claim.release
        try:
            # A fetch that ends in a store write gives the claim up in the same round trip.
            return await self._fetcher.fetch(key, request_id, store=store, release=release)
        except BaseException:
            if release:
                await self._claims.release(key)
            raise


def _no_earlier(token: str, than: str) -> bool:
    """Whether announcement ``token`` is this process's, made no earlier than ``than``: tokens are a process's
    prefix (up to its colon), then a fixed-width count."""
    prefix, _, count = token.partition(":")
    other_prefix, _, other_count = than.partition(":")
    return bool(count) and prefix == other_prefix and count >= other_count


def _retrieve(task: asyncio.Task[Served]) -> None:
    """Retrieve a forced fetch's failure, so that one whose callers all left logs no warning."""
    if not task.cancelled():
        task.exception()

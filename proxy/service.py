"""The annotation lookup: the hot tier, the store, then one fetch from Label Studio, validated and stored.

This is the proxy's one piece of business logic, free of HTTP: :mod:`proxy.routes` parses the request, calls
:meth:`AnnotationService.lookup` and writes what it returns (:class:`proxy.served.Served`). The lookup and the
fetch are here; each other concern has its own module, which this one composes:

- :mod:`proxy.cache.fail_open`: the store failing open (a failure is a miss, counted and logged);
- :mod:`proxy.loads`: loads, one per key in this process (:mod:`proxy.singleflight`) and one across replicas
  (:mod:`proxy.claims`), revalidations counted by outcome;
- :mod:`proxy.fetcher`: one fetch: validated, stored, a failing id remembered;
- :mod:`proxy.changes`: the store's announcements, which keep the hot tier coherent and wake claim waiters;
- :mod:`proxy.invalidations`: what webhooks and purges apply;
- :mod:`proxy.entries`: a cache entry from Label Studio's answer;
- :mod:`proxy.failures`: a 500 for one id, remembered briefly for that id alone.

Collaborators (the store, the upstream client, metrics, clocks) come in through the constructor, so tests build
it with whatever parts they need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from proxy.cache import AnnotationKey, AnnotationStore, CachedAnnotation, Lookup, Variant
from proxy.cache.fail_open import FailOpenStore
from proxy.cache.hot import HotTier
from proxy.changes import ChangeFollower
from proxy.claims import Claims
from proxy.directives import ORDINARY, RequestDirectives
from proxy.errors import (
    AnnotationNotFound,
    NotCached,
    ProxyError,
    UpstreamBadStatus,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.failures import RecentFailures
from proxy.fetcher import Fetcher
from proxy.freshness import Freshness, Judge
from proxy.hot_copies import HotCopies
from proxy.invalidations import Invalidations
from proxy.loads import Loads
from proxy.metrics import CacheResult, Metrics
from proxy.policy import AnnotationSource, CachePolicy
from proxy.served import Forward, Served

log = logging.getLogger("proxy.service")

# Label Studio failures that a cached version may hide (stale-if-error). A 404, an invalid body or rejected
# credentials are answers, not failures: they are never hidden.
UNAVAILABLE = (UpstreamTimeout, UpstreamUnavailable, UpstreamBadStatus)


class AnnotationService:
    def __init__(
        self,
        store: AnnotationStore,
        source: AnnotationSource,
        metrics: Metrics,
        policy: CachePolicy,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        hot: HotTier[Served] | None = None,
    ) -> None:
        self._metrics = metrics
        self._count_hot = metrics.requests.cache_request  # a hot hit's count: no frame of Metrics' own
        self._policy = policy
        self._clock = clock
        self.hot: HotTier[Served] = hot if hot is not None else HotTier(ttl=0, max_bytes=0, clock=clock)
        self._cache = FailOpenStore(store, metrics, monotonic=monotonic)
        self._failures = RecentFailures(clock=clock)
        self._fetcher = Fetcher(
            source, self._cache, hot=self.hot, failures=self._failures, metrics=metrics, policy=policy, clock=clock
        )
        self._follower = ChangeFollower(store, self.hot)
        self._judge = Judge(policy, clock)
        self._copies = HotCopies(self.hot, read=self._cache.read, fresh=self._judge.fresh, policy=policy, clock=clock)
        claims = Claims(self._cache, self._follower, metrics, ttl=policy.claim_ttl, fresh=self._judge.fresh)
        self._loads = Loads(self._cache, claims, self._fetcher, metrics, fresh=self._judge.fresh)
        self._follower.on_superseded = self._loads.superseded  # its loads in flight take no more requests
        self.invalidations = Invalidations(
            self._cache,
            self.hot,
            self._failures,
            reload=self._loads.reload,
            reloading=self._loads.running,
            retention=policy.retention,
            fence_ttl=policy.fence_ttl,
            clock=clock,
        )
        # What webhooks and operators apply (proxy/invalidations.py); these raise CacheError.
        self.annotation_changed = self.invalidations.annotation_changed
        self.annotation_deleted = self.invalidations.annotation_deleted
        self.task_deleted = self.invalidations.task_deleted
        self.purge = self.invalidations.purge

    def start(self) -> None:
        """Follow the store's announcements: for the hot tier; and for loads and claims, where the store is shared."""
        self._follower.start(shared=self._policy.claim_ttl > 0)

    async def close(self) -> None:
        """Cancel loads and hot copies' reads still in flight (at shutdown, after the server stopped taking
        requests)."""
        await self._copies.close()
        await self._loads.close()
        await self._follower.close()

    async def lookup(
        self,
        annotation_id: int,
        *,
        expand: bool,
        request_id: str,
        allowed: Callable[[int | None], bool] | None = None,
        directives: RequestDirectives = ORDINARY,
    ) -> Served:
        """Serve one annotation request: :meth:`from_hot`, else :meth:`from_store`."""
        hot = self.from_hot(annotation_id, expand=expand, directives=directives)
        if hot is not None:
            return hot
        return await self.from_store(
            annotation_id, expand=expand, request_id=request_id, allowed=allowed, directives=directives
        )

    async def from_store(
        self,
        annotation_id: int,
        *,
        expand: bool,
        request_id: str,
        allowed: Callable[[int | None], bool] | None = None,
        directives: RequestDirectives = ORDINARY,
    ) -> Served:
        """The lookup once the hot tier has no answer (ProxyError for answers but 200 and 404). ``allowed``: a scoped
        key's projects; one the cache knows to be another's is a 404 without asking Label Studio."""
        key = AnnotationKey(annotation_id, Variant.EXPANDED if expand else Variant.PLAIN)
        directives = self._policy.honoured(directives)
        epoch = self.hot.epoch
        failure = self._failures.recall(annotation_id)  # a 500 for this id, answered again without fetching
        if failure is None and self._claims_fetch(key, directives):  # a miss claims its fetch in the same trip
            cached, claimed = await self._cache.read_or_claim(key, self._policy.claim_ttl)
        else:
            cached, claimed = await self._cache.read(key), False
        if allowed is not None and isinstance(cached, CachedAnnotation) and not allowed(cached.project):
            self._metrics.cache_request("hit")  # the cache answered: no fetch
            raise AnnotationNotFound()
        try:
            served = await self._answer(key, cached, epoch, directives, request_id, claimed=claimed, failure=failure)
        except ProxyError:  # the cache missed, and so did Label Studio
            self._metrics.cache_request("miss")
            raise
        self._metrics.cache_request(served.result)
        return served

    def from_hot(self, annotation_id: int, *, expand: bool, directives: RequestDirectives = ORDINARY) -> Served | None:
        """The hot tier's answer, if it holds one the request accepts (counted); not a coroutine: no await's cost."""
        key = AnnotationKey(annotation_id, Variant.EXPANDED if expand else Variant.PLAIN)
        hot = self.hot.get(key, due=directives.ordinary)
        if hot is None:
            return None
        if not directives.ordinary and not self._judge.accepts(self._policy.honoured(directives), hot):
            return None
        self._count_hot(hot.result)  # fresh: the hot tier keeps nothing past its freshness
        return hot

    async def _answer(
        self,
        key: AnnotationKey,
        cached: Lookup,
        epoch: int,
        directives: RequestDirectives,
        request_id: str,
        *,
        claimed: bool,
        failure: UpstreamError | None,
    ) -> Served:
        """The cached answer if the policy and the request accept it, else Label Studio's."""
        judge = self._judge
        served = judge.fresh(cached)
        if served is not None and (directives.ordinary or judge.accepts(directives, served)):
            self._copies.keep(key, served, epoch)
            return served
        if isinstance(cached, CachedAnnotation) and judge.serves_stale(cached, directives):
            if not directives.only_if_cached:  # which never makes the proxy ask Label Studio
                self._loads.revalidate(key, cached, request_id)
            return Served(cached, "stale")
        if directives.only_if_cached:
            raise NotCached()
        fwd: Forward = "request" if served is not None else "stale" if isinstance(cached, CachedAnnotation) else "miss"
        store = not directives.no_store
        try:
            if failure is not None:  # a 500 for this id, answered again for a while, forced requests included
                raise failure
            if served is not None or (isinstance(cached, CachedAnnotation) and judge.state(cached) is Freshness.STALE):
                self._metrics.forced_fetches.inc()  # the proxy would have served it; the request refused it
                fetched = await self._loads.refresh(key, request_id, store=store)
            else:
                fetched = await self._loads.join_or_load(key, request_id, store=store, claimed=claimed)
        except UpstreamError as exc:  # a version the request accepts in its place (stale-if-error), or the failure
            stale = judge.stale_if_error(cached, exc.detail, directives) if isinstance(exc, UNAVAILABLE) else None
            if stale is None:
                raise exc.forwarded(fwd) from exc  # said with this request's fwd: one failure answers many requests
            return stale
        return fetched if fwd == "miss" else replace(fetched, fwd=fwd)

    def _claims_fetch(self, key: AnnotationKey, directives: RequestDirectives) -> bool:
        """Whether the read claims the fetch when nothing is cached: across replicas (claims on), only for a
        request that would fetch and store, and not while a load of this process that it would join runs."""
        if self._policy.claim_ttl <= 0 or self._loads.running(key):
            return False
        return directives.ordinary or not (directives.no_store or directives.only_if_cached)


__all__ = ["AnnotationService", "AnnotationSource", "CachePolicy", "CacheResult", "Served"]

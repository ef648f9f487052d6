"""One fetch from Label Studio: the answer validated (an invalid body is never stored or served), stored, and a
500 for the id remembered briefly (proxy/failures.py). The lookup (:mod:`proxy.service`) decides when to fetch;
this is what a fetch does."""

from __future__ import annotations

import logging
from collections.abc import Callable

from proxy.cache import AnnotationKey, CachedAnnotation, Variant
from proxy.cache.fail_open import FailOpenStore
from proxy.cache.hot import HotTier
from proxy.entries import entry_from_body
from proxy.errors import GATEWAY_STATUSES, InvalidUpstreamBody, UpstreamBadStatus
from proxy.failures import RecentFailures
from proxy.metrics import Metrics
from proxy.policy import AnnotationSource, CachePolicy
from proxy.served import Served

log = logging.getLogger("proxy.service")  # the lookup's log: operators read one logger for it


class Fetcher:
    def __init__(
        self,
        source: AnnotationSource,
        cache: FailOpenStore,
        *,
        hot: HotTier[Served],
        failures: RecentFailures,
        metrics: Metrics,
        policy: CachePolicy,
        clock: Callable[[], float],
    ) -> None:
        self._source = source
        self._cache = cache
        self.hot = hot
        self._failures = failures
        self._metrics = metrics
        self._policy = policy
        self._clock = clock

    async def fetch(self, key: AnnotationKey, request_id: str, *, store: bool = True, release: bool = False) -> Served:
        """Label Studio's answer for ``key``, as a miss: stored (``stored``) unless the store refused or failed,
        or ``store`` is false (``Cache-Control: no-store``). ``release``: the write also gives up this process's
        claim on ``key`` (the caller releases it when the fetch raises)."""
        expand = key.variant is Variant.EXPANDED
        fetched_at = self._clock()  # what Label Studio answers is at least this recent
        try:
            reply = await self._source.fetch_annotation(key.annotation_id, expand=expand, request_id=request_id)
        except UpstreamBadStatus as exc:
            status = exc.upstream_status
            if status is not None and status >= 500 and status not in GATEWAY_STATUSES:
                self._failures.remember(key.annotation_id, exc)  # this id fails, not Label Studio as a whole
            raise
        except InvalidUpstreamBody as exc:  # a body past PROXY_MAX_BODY_BYTES
            self._rejected(key, exc, request_id)
            raise
        if reply.status == 404:
            if not store:
                return Served(None, "miss")
            since = round(fetched_at * 1_000_000)
            stored = await self._remember_missing(
                key.annotation_id, since=since, release=key.variant if release else None
            )
            return Served(None, "miss", stored=stored)
        try:
            try:
                entry = entry_from_body(
                    reply.body, annotation_id=key.annotation_id, expand=expand, fetched_at=fetched_at
                )
            except InvalidUpstreamBody as exc:
                self._rejected(key, exc, request_id)
                raise
            stored = store and await self._remember(
                key, entry, release=release
            )  # encoding it for the store copies it once more
        finally:
            reply.release()  # parsed, checked and stored: its share of the memory budget goes back
        return Served(entry, "miss", stored=stored)

    def _rejected(self, key: AnnotationKey, exc: InvalidUpstreamBody, request_id: str) -> None:
        self._metrics.validation_failures.inc()
        log.warning(
            "rejected an invalid upstream body",
            extra={"annotation_id": key.annotation_id, "reason": exc.detail, "request_id": request_id},
        )

    # A stored change drops the hot tier's copy (the store's announcement will too, a moment later).

    async def _remember(self, key: AnnotationKey, entry: CachedAnnotation, *, release: bool) -> bool:
        stored = await self._cache.write(key, entry, self._policy.retention, release=release)
        if stored:
            self.hot.drop(key.annotation_id)
        return stored

    async def _remember_missing(self, annotation_id: int, *, since: int, release: Variant | None) -> bool:
        hidden = await self._cache.write_missing(annotation_id, self._policy.negative_ttl, since=since, release=release)
        if hidden:
            self.hot.drop(annotation_id)
        return hidden and self._policy.negative_ttl > 0

"""The lookup on its own: cache, coalescing, validation and version order, with a scripted upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from proxy.cache import (
    AnnotationKey,
    AnnotationStore,
    CachedAnnotation,
    KeyScheme,
    MemoryStore,
    Missing,
    Variant,
    open_redis_store,
)
from proxy.errors import CacheError, InvalidUpstreamBody, UpstreamTimeout
from proxy.exchange import UpstreamReply
from proxy.invalidations import EVENT_CONCURRENCY, for_each
from proxy.metrics import Metrics
from proxy.service import AnnotationService
from tests.fakes.source import ScriptedSource
from tests.support.lookup import POLICY, V1, V2, ok
from tests.support.waiting import wait_until


class BrokenStore(MemoryStore):
    """A store whose every operation fails, as Redis does when it is down."""

    async def get(self, key: AnnotationKey) -> None:
        raise CacheError("down")

    async def get_or_claim(self, key: AnnotationKey, ttl: float) -> tuple[None, bool]:
        raise CacheError("down")

    async def put(self, key: AnnotationKey, entry: CachedAnnotation, ttl: float, *, release: bool = False) -> bool:
        raise CacheError("down")

    async def put_missing(self, annotation_id: int, ttl: float, *, since: int, release: Variant | None = None) -> bool:
        raise CacheError("down")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create(CollectorRegistry(), version="test", process_metrics=False)


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AnnotationStore]:
    """Each service test runs on the in-process store and on a real Redis."""
    if request.param == "memory":
        yield MemoryStore(1024 * 1024)
        return
    redis_store = open_redis_store(request.getfixturevalue("redis_url"), KeyScheme("test:"), timeout=1.0)
    yield redis_store
    await redis_store.close()


@pytest.fixture
def service(store: AnnotationStore, source: ScriptedSource, metrics: Metrics) -> AnnotationService:
    return AnnotationService(store, source, metrics, POLICY)


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"annotation_proxy_{name}", labels) or 0.0


async def test_miss_then_hit(service: AnnotationService, source: ScriptedSource, metrics: Metrics) -> None:
    source.script(1, ok())
    first = await service.lookup(1, expand=False, request_id="r1")
    second = await service.lookup(1, expand=False, request_id="r2")
    assert (first.result, second.result) == ("miss", "hit")
    assert first.entry is not None
    assert second.entry is not None
    assert second.entry.body == first.entry.body == ok().body
    assert source.calls == [(1, False)]
    assert count(metrics, "cache_requests_total", result="hit") == 1
    assert count(metrics, "cache_requests_total", result="miss") == 1


async def test_not_found_is_remembered(service: AnnotationService, source: ScriptedSource) -> None:
    source.script(5, UpstreamReply(404))
    first = await service.lookup(5, expand=False, request_id="r")
    second = await service.lookup(5, expand=True, request_id="r")
    assert (first.entry, first.result, first.stored) == (None, "miss", True)
    assert (second.entry, second.result) == (None, "negative_hit")
    assert source.calls == [(5, False)]


async def test_concurrent_misses_share_one_fetch(
    service: AnnotationService, source: ScriptedSource, metrics: Metrics
) -> None:
    source.script(1, ok())
    gate = source.close_gate(1)
    lookups = [asyncio.create_task(service.lookup(1, expand=False, request_id=f"r{i}")) for i in range(200)]
    await wait_until(lambda: count(metrics, "coalesced_requests_total") == 199)
    gate.set()
    served = await asyncio.gather(*lookups)
    assert source.calls == [(1, False)]
    assert {s.entry.body for s in served if s.entry} == {ok().body}
    assert sum(s.collapsed for s in served) == 199
    assert count(metrics, "coalesced_requests_total") == 199


async def test_waiters_share_the_failure_and_nothing_is_cached(
    service: AnnotationService, source: ScriptedSource, metrics: Metrics
) -> None:
    source.script(1, UpstreamTimeout(), ok())
    gate = source.close_gate(1)
    lookups = [asyncio.create_task(service.lookup(1, expand=False, request_id="r")) for _ in range(10)]
    await source.arrived.wait()
    # Every lookup has joined the one load (a lookup still reading the store when it failed would start another).
    await wait_until(lambda: count(metrics, "coalesced_requests_total") == 9)
    gate.set()
    results = await asyncio.gather(*lookups, return_exceptions=True)
    assert all(isinstance(r, UpstreamTimeout) for r in results)
    again = await service.lookup(1, expand=False, request_id="r")
    assert again.result == "miss"
    assert len(source.calls) == 2


async def test_invalid_body_is_never_cached(
    service: AnnotationService, source: ScriptedSource, metrics: Metrics
) -> None:
    source.script(1, ok(last_action="exploded"), ok())
    with pytest.raises(InvalidUpstreamBody):
        await service.lookup(1, expand=False, request_id="r")
    assert count(metrics, "validation_failures_total") == 1
    good = await service.lookup(1, expand=False, request_id="r")
    assert good.result == "miss"
    assert good.stored
    assert (await service.lookup(1, expand=False, request_id="r")).result == "hit"


async def test_older_version_arriving_after_newer_does_not_replace_it(
    service: AnnotationService, source: ScriptedSource
) -> None:
    # The plain fetch leaves first and sees version 1; the expand fetch leaves later and sees version 2,
    # but answers first. The late, older answer must not become the newest version.
    source.script(1, ok(updated_at=V1))
    source.script(1, ok(updated_at=V2, completed_by={"id": 1, "email": "a@b.c"}), expand=True)
    source.script(1, ok(updated_at=V2))
    plain_gate = source.close_gate(1)
    plain = asyncio.create_task(service.lookup(1, expand=False, request_id="r"))
    await source.arrived.wait()
    expanded = await service.lookup(1, expand=True, request_id="r")
    plain_gate.set()
    late = await plain
    assert expanded.stored
    assert not late.stored  # refused: a newer version is known
    source.gates.clear()
    after = await service.lookup(1, expand=False, request_id="r")
    assert after.result == "miss"  # version 1 is not served from the cache
    assert after.entry is not None
    assert b'"updated_at":"2026-11-28T12:00:00.000002Z"' in after.entry.body


async def test_a_caller_leaving_does_not_cancel_the_shared_fetch(
    service: AnnotationService, source: ScriptedSource, metrics: Metrics
) -> None:
    source.script(1, ok())
    gate = source.close_gate(1)
    leaver = asyncio.create_task(service.lookup(1, expand=False, request_id="r1"))
    await source.arrived.wait()
    stayer = asyncio.create_task(service.lookup(1, expand=False, request_id="r2"))
    await wait_until(lambda: count(metrics, "coalesced_requests_total") == 1)  # the second caller joined the load
    leaver.cancel()
    gate.set()
    served = await stayer
    assert served.entry is not None
    assert leaver.cancelled()
    assert source.calls == [(1, False)]


async def test_a_broken_cache_fails_open(source: ScriptedSource, metrics: Metrics) -> None:
    service = AnnotationService(BrokenStore(1024 * 1024), source, metrics, POLICY)
    source.script(1, ok(), ok())
    source.script(2, UpstreamReply(404))
    for _ in range(2):
        served = await service.lookup(1, expand=False, request_id="r")
        assert served.result == "miss"
        assert not served.stored
    assert (await service.lookup(2, expand=False, request_id="r")).entry is None
    assert count(metrics, "cache_errors_total", operation="get") == 6  # each lookup reads twice on a miss
    assert count(metrics, "cache_errors_total", operation="put") == 2
    assert count(metrics, "cache_errors_total", operation="put_missing") == 1


async def test_entry_records_version_project_and_task(service: AnnotationService, source: ScriptedSource) -> None:
    source.script(1, ok(updated_at=V2, project=9, task=4))
    served = await service.lookup(1, expand=False, request_id="r")
    assert served.entry is not None
    assert (served.entry.version, served.entry.project, served.entry.task) == (1_795_867_200_000_002, 9, 4)


async def test_close_cancels_loads_in_flight(service: AnnotationService, source: ScriptedSource) -> None:
    source.script(1, ok())
    source.close_gate(1)
    lookup = asyncio.create_task(service.lookup(1, expand=False, request_id="r"))
    await source.arrived.wait()
    await service.close()
    with pytest.raises(asyncio.CancelledError):
        await lookup


class TickingClock:
    """Wall-clock seconds that move on by a millisecond at every reading."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


async def test_a_200_fetched_before_a_404_does_not_bring_the_annotation_back(
    store: AnnotationStore, source: ScriptedSource, metrics: Metrics
) -> None:
    service = AnnotationService(store, source, metrics, POLICY, clock=TickingClock())
    source.script(1, ok())  # leaves first, answers last: from before the deletion
    source.script(1, UpstreamReply(404), expand=True)  # leaves later, sees the deletion
    source.script(1, UpstreamReply(404))
    plain_gate = source.close_gate(1)
    plain = asyncio.create_task(service.lookup(1, expand=False, request_id="r"))
    await source.arrived.wait()
    assert (await service.lookup(1, expand=True, request_id="r")).entry is None
    plain_gate.set()
    late = await plain
    assert late.entry is not None  # that caller asked before the deletion
    assert not late.stored
    assert (await service.lookup(1, expand=False, request_id="r")).result == "negative_hit"


async def test_close_cancels_a_load_that_a_webhook_superseded(
    store: AnnotationStore, source: ScriptedSource, metrics: Metrics
) -> None:
    service = AnnotationService(store, source, metrics, POLICY)
    source.script(1, ok(updated_at=V1), ok(updated_at=V2))
    source.close_gate(1)
    first = asyncio.create_task(service.lookup(1, expand=False, request_id="r"))
    await source.arrived.wait()
    # A webhook supersedes the load in flight; cache the version first so the webhook re-fetches it.
    await store.put(AnnotationKey(1, Variant.PLAIN), CachedAnnotation(1, 1, 0.0, b"{}"), 60)
    await service.annotation_changed(1, 1_795_867_200_000_002, request_id="w")
    await wait_until(lambda: len(source.calls) == 2)  # the superseding load has started
    await service.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, 5)  # without close() reaching it, this would time out


class FailsFor(MemoryStore):
    """A store that fails to remember a 404 for some ids only (a Redis shard down, a timeout)."""

    def __init__(self, failing: set[int]) -> None:
        super().__init__(1024 * 1024)
        self.failing = failing

    async def put_missing(self, annotation_id: int, ttl: float, *, since: int, release: Variant | None = None) -> bool:
        if annotation_id in self.failing:
            raise CacheError("down")
        return await super().put_missing(annotation_id, ttl, since=since, release=release)


async def test_a_many_id_event_applies_every_id_the_cache_takes_then_reports_the_failure(
    source: ScriptedSource, metrics: Metrics
) -> None:
    ids = list(range(1, 2 * EVENT_CONCURRENCY + 5))  # more than one batch
    store = FailsFor({3, EVENT_CONCURRENCY + 2})
    service = AnnotationService(store, source, metrics, POLICY)
    with pytest.raises(CacheError):
        await for_each(ids, service.annotation_deleted)
    remembered = {i for i in ids if isinstance(await store.get(AnnotationKey(i, Variant.PLAIN)), Missing)}
    assert remembered == set(ids) - store.failing
    assert count(metrics, "cache_errors_total", operation="invalidate") == 2

"""Several proxy processes sharing one Redis: a cold annotation is fetched from Label Studio once in total."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy import claims, directives
from proxy.cache import (
    AnnotationKey,
    CachedAnnotation,
    KeyScheme,
    MemoryStore,
    RedisStore,
    Superseded,
    Variant,
    open_redis_store,
)
from proxy.cache.hot import HotTier
from proxy.cache.redis_store import ClaimBook
from proxy.changes import ChangeFollower
from proxy.errors import CacheError
from proxy.exchange import UpstreamReply
from proxy.metrics import Metrics
from proxy.served import Served
from proxy.service import AnnotationService
from tests.fakes.label_studio import FakeLabelStudio
from tests.fakes.source import ScriptedSource
from tests.support.clock import Clock
from tests.support.lookup import POLICY, V1, V2, ok
from tests.support.processes import ProxyProcess, proxy_process
from tests.support.redis_servers import SentinelTopology, running_redis
from tests.support.waiting import poll_until, wait_until

pytestmark = pytest.mark.redis

REQUESTS = 500
V2_MICROS = 1_795_867_200_000_002  # V2's updated_at
V3_MICROS = V2_MICROS + 1
COALESCED = "annotation_proxy_coalesced_requests_total"


async def coalesced(proxy: ProxyProcess, session: aiohttp.ClientSession) -> float:
    return (await proxy.metrics(session)).get("annotation_proxy_coalesced_requests_total", 0.0)


async def test_a_cold_id_is_fetched_once_across_replicas(
    upstream: TestServer, fake_ls: FakeLabelStudio, tmp_path: Path
) -> None:
    fake_ls.add_annotation()
    # Generous deadlines: this test is about coalescing, and on a loaded machine a 0.25 s Redis timeout (the claim
    # fails open: each replica fetches) or an 11 s claim TTL (the joins take long) would be a different test.
    with running_redis() as redis:
        settings = {"REDIS_URL": redis.url, "PROXY_REDIS_TIMEOUT": "5", "PROXY_UPSTREAM_TIMEOUT": "60"}
        async with (
            proxy_process(upstream.make_url("/"), fake_ls.legacy_token, tmp_path / "a.log", **settings) as a,
            proxy_process(upstream.make_url("/"), fake_ls.legacy_token, tmp_path / "b.log", **settings) as b,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        ):
            fake_ls.hold()  # the one fetch waits until every request is in
            answers = [asyncio.create_task(replica.get(session, 1)) for _ in range(REQUESTS // 2) for replica in (a, b)]
            await fake_ls.wait_for_annotation_gets(1)
            # Every request has joined its replica's load: one of them holds the claim and waits on Label Studio,
            # the other waits for the first one's result.
            for replica in (a, b):

                async def all_joined(replica: ProxyProcess = replica) -> bool:
                    return await coalesced(replica, session) >= REQUESTS // 2 - 1

                await poll_until(all_joined, 30)
            assert len(fake_ls.annotation_gets(1)) == 1
            fake_ls.release()
            results = await asyncio.gather(*answers)
            # The one claiming counted its joiners; the one waiting also counts its wait for the other replica.
            counts = sorted([await coalesced(a, session), await coalesced(b, session)])
    assert len(fake_ls.annotation_gets(1)) == 1
    assert not [answer for answer in results if isinstance(answer, Exception)]
    versions = {(a.status, json.loads(a.body)["updated_at"]) for a in results if not isinstance(a, Exception)}
    assert versions == {(200, fake_ls.annotation(1)["updated_at"])}
    assert counts == [REQUESTS // 2 - 1, REQUESTS // 2]


async def test_without_redis_each_replica_fetches_for_itself(
    upstream: TestServer, fake_ls: FakeLabelStudio, tmp_path: Path
) -> None:
    """The control: the same load on two replicas with in-process stores makes one fetch per replica."""
    fake_ls.add_annotation()
    async with (
        proxy_process(upstream.make_url("/"), fake_ls.legacy_token, tmp_path / "a.log") as a,
        proxy_process(upstream.make_url("/"), fake_ls.legacy_token, tmp_path / "b.log") as b,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        fake_ls.hold()
        answers = [asyncio.create_task(replica.get(session, 1)) for _ in range(50) for replica in (a, b)]
        await fake_ls.wait_for_annotation_gets(2)
        fake_ls.release()
        await asyncio.gather(*answers)
    assert len(fake_ls.annotation_gets(1)) == 2


KEY = AnnotationKey(1, Variant.PLAIN)


def emptied_redis(request: pytest.FixtureRequest, mode: str) -> tuple[str, Redis | RedisCluster]:
    """The session's Redis of ``mode``, emptied: its REDIS_URL, and a client of the (primary) nodes."""
    if mode == "cluster":
        url: str = request.getfixturevalue("redis_cluster")
        cluster = RedisCluster.from_url(url)
        cluster.flushall()
        return url, cluster
    if mode == "sentinel":
        topology: SentinelTopology = request.getfixturevalue("redis_sentinel")
        primary = topology.client(topology.primary)
        primary.flushall()
        return topology.url, primary
    url = request.getfixturevalue("redis_url")  # comes emptied
    return url, Redis.from_url(url)


async def lost(*args: object, **kwargs: object) -> object:
    raise ConnectionError("the reply was lost")


@pytest.mark.parametrize("mode", ["standalone", "cluster", "sentinel"])
async def test_a_claim_is_granted_once_until_released_or_lapsed(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    redis_url, client = emptied_redis(request, mode)
    one, other = (open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0, mode=mode) for _ in range(2))
    try:
        assert await one.claim(KEY, 5.0) is True
        assert await other.claim(KEY, 5.0) is False
        assert await other.claim(AnnotationKey(1, Variant.EXPANDED), 5.0) is True  # each variant its own
        await other.release(KEY)  # not the holder: changes nothing
        assert await other.claim(KEY, 5.0) is False
        assert 0 < client.pttl(KeyScheme("test:").claim(1, Variant.PLAIN)) <= 5000  # it lapses if its holder dies
        # Another load of the holder's process is not granted it while the first one holds it...
        assert await one.claim(KEY, 60.0) is False
        # ...but once the holder's release is lost on the way, the process takes its own claim over, renewed.
        monkeypatch.setattr(one, "_release", lost)
        with pytest.raises(CacheError):
            await one.release(KEY)
        monkeypatch.undo()
        assert await one.claim(KEY, 60.0) is True
        assert 5000 < client.pttl(KeyScheme("test:").claim(1, Variant.PLAIN)) <= 60_000
        await one.release(KEY)
        assert await other.claim(KEY, 5.0) is True
    finally:
        client.close()
        await one.close()
        await other.close()


TwoStores = tuple[RedisStore, RedisStore]


@pytest.fixture
async def two_stores(redis_url: str) -> AsyncIterator[TwoStores]:
    """This process's store and another replica's, on the session's Redis (emptied for each test)."""
    store, other = (open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0) for _ in range(2))
    try:
        yield store, other
    finally:
        await store.close()
        await other.close()


@pytest.mark.parametrize("first", ["claim", "claiming read"])
async def test_a_process_asks_no_claim_while_its_own_claim_is_on_its_way(two_stores: TwoStores, first: str) -> None:
    """Both would be granted, as claims of the same process, and one of them let go under the other's load."""
    store, other = two_stores
    call = store.claim(KEY, 5.0) if first == "claim" else store.get_or_claim(KEY, 5.0)
    on_its_way = asyncio.create_task(call)
    await asyncio.sleep(0)  # sent, or waiting for a connection: in either case not answered yet
    assert not on_its_way.done()
    assert await store.claim(KEY, 5.0) is False  # another load's poll: it waits, as beside a holder
    assert (await store.get_or_claim(KEY, 5.0))[1] is False  # a request's read: it reads without claiming
    await on_its_way
    assert await other.claim(KEY, 5.0) is False  # the one granted holds it


class Delayed:
    """A store script whose calls are kept instead of sent, to reach Redis when :meth:`deliver` says: a command
    whose reply timed out, or one that a later command on another connection overtook."""

    def __init__(self, script: Any, reply: object) -> None:
        self.script, self.reply = script, reply
        self.kept: list[dict[str, Any]] = []

    async def __call__(self, **call: Any) -> object:
        self.kept.append(call)
        return self.reply

    async def deliver(self) -> None:
        for call in self.kept:
            await self.script(**call)


@pytest.mark.parametrize("release", ["release", "write and release"])
async def test_a_release_that_reaches_redis_late_lets_go_of_its_own_grant_only(
    two_stores: TwoStores, monkeypatch: pytest.MonkeyPatch, release: str
) -> None:
    """Every grant has its own token. With one per process, a release that reached Redis after the process's next
    grant deleted that grant under the load it was given to, and another replica fetched too:
    test_a_cold_id_is_fetched_once_across_replicas saw it in 1 run of 15 (2 of 30 with a faster pool)."""
    store, other = two_stores
    assert await store.claim(KEY, 5.0) is True
    script = "_release" if release == "release" else "_write"
    late = Delayed(getattr(store, script), reply=1)
    monkeypatch.setattr(store, script, late)
    if release == "release":
        await store.release(KEY)
    else:
        assert await store.put(KEY, version_of(1, 1), 60.0, release=True)
    monkeypatch.undo()
    assert await store.claim(KEY, 5.0) is True  # the next load's claim, granted before the release arrives
    await late.deliver()
    assert await other.claim(KEY, 5.0) is False  # still held by that load
    await store.release(KEY)
    assert await other.claim(KEY, 5.0) is True


async def test_a_claim_that_reaches_redis_late_takes_nothing_from_a_later_grant(
    two_stores: TwoStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose reply timed out may still be granted afterwards: not over a later claim of its process."""
    store, other = two_stores
    late = Delayed(store._claim, reply=0)  # its reply never came: as refused, nothing held here
    monkeypatch.setattr(store, "_claim", late)
    assert await store.claim(KEY, 5.0) is False
    monkeypatch.undo()
    assert await store.claim(KEY, 5.0) is True  # the next load's claim
    await late.deliver()
    await store.release(KEY)  # that load's fetch is done
    assert await other.claim(KEY, 5.0) is True  # nothing left holding it


async def test_a_claim_whose_reply_failed_is_given_back_by_its_release(
    two_stores: TwoStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Granted in Redis, its reply lost: the load fetches as the holder (proxy/claims.py), and its release must
    find the grant's token."""
    store, other = two_stores
    claim = store._claim

    async def granted_then_lost(**call: Any) -> object:
        await claim(**call)
        raise RedisConnectionError("the reply was lost")

    monkeypatch.setattr(store, "_claim", granted_then_lost)
    with pytest.raises(CacheError):
        await store.claim(KEY, 5.0)
    monkeypatch.undo()
    assert await other.claim(KEY, 5.0) is False
    await store.release(KEY)
    assert await other.claim(KEY, 5.0) is True


class ReplyLost:
    """A store whose claims are granted in Redis but whose replies are lost on the way back (a timeout)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def claim(self, key: AnnotationKey, ttl: float) -> bool:
        await self.store.claim(key, ttl)
        raise CacheError("redis claim failed: TimeoutError")


async def test_a_claim_whose_reply_was_lost_is_released_after_the_fetch(redis_url: str) -> None:
    """Otherwise every replica would wait for it until it lapsed (PROXY_UPSTREAM_TIMEOUT + 1 s)."""
    store = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    other = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
    source = ScriptedSource()
    source.script(1, ok())
    service = AnnotationService(ReplyLost(store), source, metrics, replace(POLICY, claim_ttl=60.0))
    try:
        served = await service.lookup(1, expand=False, request_id="r")
        assert (served.result, source.calls) == ("miss", [(1, False)])
        assert await other.claim(KEY, 5.0) is True  # the claim granted behind the lost reply is gone
    finally:
        await service.close()
        await store.close()
        await other.close()


class ReadAnsweredLate:
    """A store whose claiming read is granted in Redis at once but answers only when told: meanwhile another
    request of the process reads without claiming and starts the load."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.granted, self.answer, self.refused = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def get_or_claim(self, key: AnnotationKey, ttl: float) -> tuple[Any, bool]:
        lookup, claimed = await self.store.get_or_claim(key, ttl)
        if claimed:
            self.granted.set()
            await self.answer.wait()
        return lookup, claimed

    async def claim(self, key: AnnotationKey, ttl: float) -> bool:
        granted = await self.store.claim(key, ttl)
        if not granted:
            self.refused.set()
        return granted


async def test_a_load_refused_beside_a_claim_its_process_lets_go_asks_again_at_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's claim granted beside a load already running is let go; that load, refused while the claim was
    held here, asks again as soon as the release is done, not at its next poll."""
    monkeypatch.setattr(claims, "POLL", 60.0)  # within the test, only a wake-up ends the load's wait
    store = ReadAnsweredLate(open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0))
    metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
    source = ScriptedSource()
    source.script(1, ok())
    service = AnnotationService(store, source, metrics, replace(POLICY, claim_ttl=60.0))
    try:
        first = asyncio.create_task(service.lookup(1, expand=False, request_id="a"))
        await store.granted.wait()
        second = asyncio.create_task(service.lookup(1, expand=False, request_id="b"))
        await store.refused.wait()  # the second request's load asked for the claim and waits beside it
        store.answer.set()  # the first request learns it was granted, finds the load running, and lets it go
        async with asyncio.timeout(10):
            served = await asyncio.gather(first, second)
        assert source.calls == [(1, False)]
        assert all(each.entry is not None for each in served)
    finally:
        await service.close()
        await store.store.close()


async def test_a_miss_waits_for_the_claim_holder_and_fetches_itself_if_it_never_answers(redis_url: str) -> None:
    holder = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    store = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
    source = ScriptedSource()
    source.script(1, ok())
    service = AnnotationService(store, source, metrics, replace(POLICY, claim_ttl=0.3))
    try:
        assert await holder.claim(KEY, 60.0)  # another replica claims, then dies without a word
        served = await service.lookup(1, expand=False, request_id="r")
        assert (served.result, source.calls) == ("miss", [(1, False)])
        assert served.entry is not None
    finally:
        await service.close()
        await holder.close()
        await store.close()


class WrittenBehindARead:
    """A store whose plain reads find nothing cached once, and then let another replica, which holds the claim,
    store its fetch and give the claim up: the write lands between this process's read and its next claim."""

    def __init__(self, store: RedisStore, holder: RedisStore, entry: CachedAnnotation) -> None:
        self.store, self.holder, self.entry = store, holder, entry
        self.written = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def get(self, key: AnnotationKey) -> Any:
        lookup = await self.store.get(key)
        if lookup is None and not self.written:
            self.written = True
            assert await self.holder.put(key, self.entry, 60.0, release=True)
        return lookup


async def test_a_claim_granted_once_the_holder_has_written_serves_what_it_wrote(redis_url: str) -> None:
    """A waiting replica reads, finds nothing, and asks for the claim again; if the holder's write and release
    came in between, the claim is granted, and the cache now holds the answer: it must not fetch a second time.
    test_a_cold_id_is_fetched_once_across_replicas saw this second fetch in a few runs in a hundred."""
    holder = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    entry = replace(version_of(1, 1_000), stored_at=time.time())
    store = WrittenBehindARead(open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0), holder, entry)
    metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
    source = ScriptedSource()
    source.script(1, ok())
    service = AnnotationService(store, source, metrics, replace(POLICY, claim_ttl=60.0))
    try:
        assert await holder.claim(KEY, 60.0)  # another replica fetches it
        async with asyncio.timeout(10):
            served = await service.lookup(1, expand=False, request_id="r")
        assert store.written
        assert source.calls == []
        assert served.entry is not None
        assert (served.entry.body, served.result, served.collapsed) == (entry.body, "miss", True)
        assert await holder.claim(KEY, 5.0)  # nobody holds the claim afterwards
    finally:
        await service.close()
        await holder.close()
        await store.store.close()


class ReadAfterGrantHangs:
    """A store whose claim, once granted after a refusal, is followed by a read that never answers."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.refused, self.reading = asyncio.Event(), asyncio.Event()
        self.granted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def claim(self, key: AnnotationKey, ttl: float) -> bool:
        self.granted = await self.store.claim(key, ttl)
        if not self.granted:
            self.refused.set()
        return self.granted

    async def get(self, key: AnnotationKey) -> Any:
        if self.granted:
            self.reading.set()
            await asyncio.Event().wait()
        return await self.store.get(key)


async def test_a_load_closed_while_it_reads_after_its_grant_gives_the_claim_back(redis_url: str) -> None:
    """Shutting down (Loads.close) cancels the read that follows a grant: the claim goes with it, or every other
    replica would wait out its TTL for a fetch nobody makes."""
    other = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    store = ReadAfterGrantHangs(open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0))
    metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
    service = AnnotationService(store, ScriptedSource(), metrics, replace(POLICY, claim_ttl=60.0))
    try:
        assert await other.claim(KEY, 60.0)
        lookup = asyncio.create_task(service.lookup(1, expand=False, request_id="r"))
        async with asyncio.timeout(10):
            await store.refused.wait()
            await other.release(KEY)  # its fetch failed: the waiting load takes the claim over at its next look
            await store.reading.wait()
        await service.close()
        with pytest.raises(asyncio.CancelledError):
            await lookup
        assert await other.claim(KEY, 5.0)
    finally:
        await service.close()
        await other.close()
        await store.store.close()


async def test_an_announcement_wakes_every_load_waiting_for_the_id_whichever_stopped_waiting_first() -> None:
    """The plain and the expanded variant's loads may wait for one id at once. The first to stop waiting (its look
    at the store is due) took the id's wake-up with it, and the other then slept through the announcement."""
    follower = ChangeFollower(MemoryStore(max_bytes=0), HotTier(ttl=0, max_bytes=0, clock=time.time))
    plain = asyncio.create_task(follower.changed(1, at_most=0.05))
    expanded = asyncio.create_task(follower.changed(1, at_most=60.0))
    await plain
    assert not expanded.done()
    follower.wake(1)
    async with asyncio.timeout(10):
        await expanded


Replicas = tuple[AnnotationService, AnnotationService, ScriptedSource]


@asynccontextmanager
async def two_replicas(redis_url: str, *, hot_ttl: float = 5.0) -> AsyncIterator[Replicas]:
    """Replicas A and B sharing the session's Redis, both following its announcements, and B's Label Studio."""
    services, stores = [], []
    sources = ScriptedSource(), ScriptedSource()
    for source in sources:
        store = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
        stores.append(store)
        metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
        hot: HotTier[Served] = HotTier(ttl=hot_ttl, max_bytes=100_000, clock=time.time)
        services.append(AnnotationService(store, source, metrics, replace(POLICY, claim_ttl=60.0), hot=hot))
    a, b = services
    try:
        for service in services:
            service.start()
        await wait_until(lambda: a.hot.enabled and b.hot.enabled)  # both hear the announcements
        yield a, b, sources[1]
    finally:
        for service, store in zip(services, stores, strict=True):
            await service.close()
            await store.close()


def superseded_heard(service: AnnotationService) -> list[Superseded]:
    """The Superseded announcements ``service`` hears from now on, each as soon as it has acted on it."""
    heard: list[Superseded] = []
    told = service._follower.on_superseded

    def superseded(change: Superseded) -> None:
        told(change)
        heard.append(change)

    service._follower.on_superseded = superseded
    return heard


@pytest.mark.parametrize("hot_ttl", [5.0, 0.0])  # the announcements are followed with the hot tier off too
async def test_a_change_another_replica_applied_is_not_answered_by_a_load_that_left_before_it(
    redis_url: str, hot_ttl: float
) -> None:
    """Replica B's fetch of an id was on its way when replica A applied ANNOTATION_UPDATED for it. A's requests
    stop joining its own loads of the id at once; B's went on joining that fetch after hearing the change, and
    were answered the version from before it."""
    async with two_replicas(redis_url, hot_ttl=hot_ttl) as (a, b, source), asyncio.timeout(10):
        source.script(1, ok(updated_at=V1), ok(updated_at=V2))
        gate = source.close_gate(1)
        heard = superseded_heard(b)
        before = asyncio.create_task(b.lookup(1, expand=False, request_id="before"))
        await source.arrived.wait()  # B's fetch left: Label Studio answers V1
        await a.annotation_changed(1, V2_MICROS, request_id="webhook")
        await wait_until(lambda: bool(heard))
        after = asyncio.create_task(b.lookup(1, expand=False, request_id="after"))
        gate.set()
        answers = await asyncio.gather(before, after)
    assert [json.loads(served.entry.body)["updated_at"] for served in answers if served.entry] == [V1, V2]


@pytest.mark.parametrize("changes", [[V2_MICROS], [V2_MICROS, V3_MICROS]])
async def test_the_reload_of_a_change_applied_here_still_takes_requests_when_its_announcement_comes_back(
    redis_url: str, changes: list[int]
) -> None:
    """The replica that applied a change started its reload after it: hearing its own announcement (or that of
    an earlier change of its own), it must not send the requests meanwhile to Label Studio again."""
    store = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    registry = CollectorRegistry()
    metrics = Metrics.create(registry, version="test", process_metrics=False)
    source = ScriptedSource()
    source.script(1, ok(updated_at=V1), *[ok(updated_at=V2)] * (len(changes) + 1))
    hot: HotTier[Served] = HotTier(ttl=5.0, max_bytes=100_000, clock=time.time)
    service = AnnotationService(store, source, metrics, replace(POLICY, claim_ttl=60.0), hot=hot)
    heard = superseded_heard(service)
    try:
        service.start()
        async with asyncio.timeout(10):
            await wait_until(lambda: hot.enabled)
            await service.lookup(1, expand=False, request_id="first")  # V1, cached
            gate = source.close_gate(1)
            for version in changes:
                await service.annotation_changed(1, version, request_id="webhook")  # a reload leaves
            await wait_until(lambda: len(heard) == len(changes))
            during = asyncio.create_task(service.lookup(1, expand=False, request_id="during"))
            # It joins a load (counted as coalesced), or asks Label Studio itself.
            await wait_until(lambda: bool(registry.get_sample_value(COALESCED)) or len(source.calls) > len(changes) + 1)
            gate.set()
            served = await during
        assert len(source.calls) == len(changes) + 1
        assert served.entry is not None
        assert json.loads(served.entry.body)["updated_at"] == V2
    finally:
        await service.close()
        await store.close()


async def test_a_version_stored_again_lets_requests_go_on_joining_a_load_in_flight(redis_url: str) -> None:
    """Only a change (a Superseded announcement) stops requests joining a load: a write that stores a version
    again (a forced fetch, a revalidation, on any replica) announces its id too, and with steady no-cache traffic
    each replica would have started fetch after fetch."""
    other = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    store = open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0)
    metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
    source = ScriptedSource()
    source.script(2, ok(2))
    gate = source.close_gate(2)
    hot: HotTier[Served] = HotTier(ttl=5.0, max_bytes=100_000, clock=time.time)
    service = AnnotationService(store, source, metrics, replace(POLICY, claim_ttl=60.0), hot=hot)
    woken = asyncio.Event()
    wake = service._follower.wake

    def woke(annotation_id: int) -> None:
        wake(annotation_id)
        woken.set()

    service._follower.wake = woke  # type: ignore[method-assign]
    key = AnnotationKey(2, Variant.PLAIN)
    try:
        service.start()
        async with asyncio.timeout(10):
            await wait_until(lambda: hot.enabled)
            load = asyncio.create_task(service.lookup(2, expand=False, request_id="in flight"))
            await source.arrived.wait()
            entry = replace(version_of(2, 1_000), stored_at=time.time())
            await other.put(key, entry, 60.0)
            await other.put(key, entry, 60.0)  # stored again: announced
            await woken.wait()
            assert service._loads.running(key)
            gate.set()
            await load
    finally:
        await service.close()
        await store.close()
        await other.close()


async def test_a_deletion_another_replica_applied_is_not_answered_by_a_forced_fetch_that_left_before_it(
    redis_url: str,
) -> None:
    """A no-cache request joins the forced fetch of its id in flight (docs/freshness.md): that fetch left before
    ANNOTATIONS_DELETED reached another replica, and answered the deleted annotation to requests made after it."""
    no_cache = directives.parse("no-cache", "")
    async with two_replicas(redis_url) as (a, b, source), asyncio.timeout(10):
        source.script(1, ok(), UpstreamReply(404, b'{"detail": "Not found."}'))
        gate = source.close_gate(1)
        heard = superseded_heard(b)
        before = asyncio.create_task(b.lookup(1, expand=False, request_id="before", directives=no_cache))
        await source.arrived.wait()  # B's forced fetch left: Label Studio answers 200
        await a.annotation_deleted(1)
        await wait_until(lambda: bool(heard))
        after = asyncio.create_task(b.lookup(1, expand=False, request_id="after", directives=no_cache))
        # It joins the fetch in flight (and waits with it), or asks Label Studio itself.
        await wait_until(lambda: len(source.calls) == 2 or after.done())
        gate.set()
        answers = await asyncio.gather(before, after, return_exceptions=True)
    assert len(source.calls) == 2  # the request after the deletion asked Label Studio itself
    assert not isinstance(answers[1], Served) or answers[1].entry is None


def version_of(annotation_id: int, version: int) -> CachedAnnotation:
    body = b'{"id":%d,"v":%d}' % (annotation_id, version)
    return CachedAnnotation(annotation_id=annotation_id, version=version, stored_at=1_700_000_000.5, body=body)


async def test_a_write_is_announced_only_to_whoever_may_hold_its_id_or_wait_for_it(redis_url: str) -> None:
    """Every replica hears every announcement, and each wakes its loop: a cold id's first version, which no process
    can have read, is told to nobody. Everything another process may hold a copy of, or waits for, is."""
    one, other = (open_redis_store(redis_url, KeyScheme("test:"), timeout=1.0) for _ in range(2))
    heard = other.changes()
    try:
        assert await anext(heard) is None  # subscribed: nothing from here on is missed
        # Silent: first versions and first 404s, claimed or not, that no one waits for.
        await one.put(AnnotationKey(1, Variant.PLAIN), version_of(1, 1_000), 60)
        assert await one.claim(AnnotationKey(2, Variant.PLAIN), 5.0)
        await one.put(AnnotationKey(2, Variant.PLAIN), version_of(2, 1_000), 60, release=True)
        await one.put_missing(3, 30, since=1_000)
        # Announced: what replaces a version or a 404 that was there...
        await one.put(AnnotationKey(1, Variant.PLAIN), version_of(1, 2_000), 60)
        await one.put(AnnotationKey(3, Variant.PLAIN), version_of(3, 2_000), 60)
        await one.put_missing(1, 30, since=3_000)
        await one.put_missing(8, 30, since=1_000)  # silent: the first 404...
        await one.put_missing(8, 30, since=2_000)  # ...but not the next one
        # ...a first version another replica waits for (its claim was refused)...
        assert await one.claim(AnnotationKey(4, Variant.PLAIN), 5.0)
        assert await other.claim(AnnotationKey(4, Variant.PLAIN), 5.0) is False
        await one.put(AnnotationKey(4, Variant.PLAIN), version_of(4, 1_000), 60, release=True)
        # ...or a 404 a replica waits for in either variant (it answers both)...
        assert await one.claim(AnnotationKey(10, Variant.EXPANDED), 5.0)
        assert await other.claim(AnnotationKey(10, Variant.EXPANDED), 5.0) is False
        await one.put_missing(10, 30, since=1_000)  # a fetch of the plain variant, holding no claim
        # ...or a load of the holder's own process waits for (refused there, without asking Redis)...
        assert await one.claim(AnnotationKey(5, Variant.PLAIN), 5.0)
        assert await one.claim(AnnotationKey(5, Variant.PLAIN), 5.0) is False
        await one.put_missing(5, 30, since=1_000, release=Variant.PLAIN)
        # (A claim given up after a failed fetch takes that wait with it: the waiting load polls and claims anew.)
        assert await one.claim(AnnotationKey(9, Variant.PLAIN), 5.0)
        assert await one.claim(AnnotationKey(9, Variant.PLAIN), 5.0) is False
        await one.release(AnnotationKey(9, Variant.PLAIN))
        await one.put(AnnotationKey(9, Variant.PLAIN), version_of(9, 1_000), 60)
        # ...and what webhooks and operators change.
        await one.invalidate(6, 1_000, 60)
        await one.drop(7)
        # Pub/sub keeps the order: had a silent write been announced, its id would be among these.
        announced = [await asyncio.wait_for(anext(heard), 5.0) for _ in range(11)]
        # A webhook's invalidation and an operator's drop also say the id was superseded, just before it.
        shown = [f"~{each.annotation_id}" if isinstance(each, Superseded) else each for each in announced]
        assert shown == [1, 3, 1, 8, 4, 10, 5, "~6", 6, "~7", 7]
    finally:
        await heard.aclose()
        await one.close()
        await other.close()


async def test_a_claim_whose_release_never_reached_redis_lapses_here_as_there(redis_url: str) -> None:
    """The cache's circuit opened between the grant and the release: Redis lets the claim lapse after its TTL, and
    so must the process, or every later miss of the id here would wait out a whole TTL for a fetch nobody makes."""
    clock = Clock(0.0)
    store = RedisStore(AsyncRedis.from_url(redis_url), KeyScheme("test:"), monotonic=clock)
    try:
        assert await store.claim(KEY, 5.0)  # then its release is lost: nothing tells the store
        assert await store.claim(KEY, 5.0) is False  # another load of this process: it waits for the holder
        clock.now += 5.0
        assert await store.claim(KEY, 5.0) is True  # lapsed here too: asked again, its own claim renewed
    finally:
        await store.close()


def test_claims_whose_release_never_came_are_forgotten_as_they_lapse() -> None:
    """A process's record of its claims stays as small as the claims alive: each grant forgets those that lapsed
    (the oldest first, a claim granted again going last), never scanning the live ones."""
    clock = Clock(0.0)
    book = ClaimBook(monotonic=clock)
    for annotation_id in range(1, 11):
        book.granted(AnnotationKey(annotation_id, Variant.PLAIN), 5.0, "t")  # their releases never come
    clock.now += 1.0
    book.granted(AnnotationKey(1, Variant.PLAIN), 5.0, "t")  # until 6: now the last to lapse
    clock.now += 4.5
    book.granted(AnnotationKey(11, Variant.PLAIN), 5.0, "t")
    assert len(book) == 2  # 2 to 10 lapsed at 5 and are gone; 1 holds until 6
    assert book.busy(AnnotationKey(1, Variant.PLAIN))
    assert not book.busy(AnnotationKey(2, Variant.PLAIN))

"""The hot tier (proxy/cache/hot.py): fresh answers kept in process, and dropped on every replica when they change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis import Redis
from redis.cluster import RedisCluster

from proxy.cache import (
    AnnotationKey,
    CachedAnnotation,
    KeyScheme,
    Lookup,
    MemoryStore,
    Superseded,
    Variant,
    open_redis_store,
)
from proxy.cache.hot import RECORD_OVERHEAD, REREAD_GRACE, HotTier
from proxy.changes import RETRY_MAX, RETRY_MIN, ChangeFollower
from proxy.directives import parse as parse_directives
from proxy.exchange import UpstreamReply
from proxy.hot_copies import HotCopies
from proxy.keys import SERVICE
from proxy.metrics import Metrics
from proxy.service import AnnotationService, Served
from tests.fakes.source import ScriptedSource
from tests.support.cache_status import status_of
from tests.support.clock import Clock
from tests.support.lookup import POLICY, ok
from tests.support.proxies import Proxy, ProxyFactory
from tests.support.redis_servers import SentinelTopology
from tests.support.waiting import wait_until
from tests.support.webhooks import annotation_event

KEY = AnnotationKey(7, Variant.PLAIN)
EXPANDED = AnnotationKey(7, Variant.EXPANDED)
SECRET = "webhook-secret-0123456789"


def served(annotation_id: int = 7, body: bytes = b"{}") -> Served:
    entry = CachedAnnotation(annotation_id=annotation_id, version=1, stored_at=0.0, body=body)
    return Served(entry, "hit")


@pytest.fixture
def hot(clock: Clock) -> HotTier[Served]:
    tier = HotTier(ttl=5.0, max_bytes=10_000, clock=clock)
    tier.resume()
    return tier


def whole_ttl(clock: Clock) -> HotTier[Served]:
    """A tier whose copies are kept for the whole TTL (none drawn earlier in its last quarter)."""
    tier: HotTier[Served] = HotTier(ttl=5.0, max_bytes=10_000, clock=clock, draw=lambda: 0.0)
    tier.resume()
    return tier


class Asked(list[AnnotationKey]):
    """The keys a tier asked to read again, and the copies it gave with them."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[object] = []

    def __call__(self, key: AnnotationKey, copy: object) -> None:
        self.append(key)
        self.copies.append(copy)


def reading_again(clock: Clock) -> tuple[HotTier[Served], Asked]:
    """A whole-TTL tier that records what it asks to read again."""
    hot, asked = whole_ttl(clock), Asked()
    hot.read_again = asked
    return hot, asked


class TestHotTier:
    def test_keeps_an_answer_for_its_ttl_and_never_past_its_freshness(self, hot: HotTier[Served], clock: Clock) -> None:
        answer = served()
        hot.put(KEY, answer, size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        assert hot.get(KEY) is answer
        clock.now += 5
        assert hot.get(KEY) is None  # the tier's own TTL
        hot.put(KEY, answer, size=2, fresh_until=clock.now + 1, epoch=hot.epoch)
        clock.now += 1
        assert hot.get(KEY) is None  # the version's freshness ends first

    def test_answers_kept_together_leave_over_the_last_quarter_of_the_ttl(self, clock: Clock) -> None:
        draws = iter([0.0, 0.5, 0.999])
        hot: HotTier[Served] = HotTier(ttl=4.0, max_bytes=10_000, clock=clock, draw=lambda: next(draws))
        hot.resume()
        keys = [AnnotationKey(n, Variant.PLAIN) for n in (1, 2, 3)]
        for key in keys:
            hot.put(key, served(key.annotation_id), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        kept = []
        for moment in (2.9, 3.1, 3.6, 4.0):
            clock.now += moment - (kept[-1][0] if kept else 0.0)
            kept.append((moment, [key.annotation_id for key in keys if hot.get(key) is not None]))
        assert kept == [(2.9, [1, 2, 3]), (3.1, [1, 2]), (3.6, [1]), (4.0, [])]

    def test_an_answer_read_before_a_change_is_refused(self, hot: HotTier[Served], clock: Clock) -> None:
        epoch = hot.epoch  # a read begins...
        hot.drop(7)  # ...the change is heard...
        hot.put(KEY, served(), size=2, fresh_until=clock.now + 100, epoch=epoch)  # ...the older answer arrives
        assert hot.get(KEY) is None

    def test_drop_forgets_both_variants_of_the_annotation_only(self, hot: HotTier[Served], clock: Clock) -> None:
        for key in (KEY, EXPANDED, AnnotationKey(8, Variant.PLAIN)):
            hot.put(key, served(key.annotation_id), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        hot.drop(7)
        assert (hot.get(KEY), hot.get(EXPANDED)) == (None, None)
        assert hot.get(AnnotationKey(8, Variant.PLAIN)) is not None

    def test_nothing_is_kept_or_served_while_suspended(self, hot: HotTier[Served], clock: Clock) -> None:
        hot.put(KEY, served(), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        hot.suspend()
        assert hot.get(KEY) is None
        hot.put(KEY, served(), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        assert len(hot) == 0
        hot.resume()
        hot.put(KEY, served(), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        assert hot.get(KEY) is not None

    def test_a_due_copy_is_answered_while_it_is_read_again_once(self, clock: Clock) -> None:
        hot, asked = reading_again(clock)
        answer = served()
        hot.put(KEY, answer, size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        clock.now += 5  # its time in the tier is up; its version is fresh for a while yet
        assert [hot.get(KEY), hot.get(KEY)] == [answer, answer]
        assert asked == [KEY]  # one read, however many hits meanwhile
        newer = served()  # what the read found
        hot.put(KEY, newer, size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        assert (hot.get(KEY), asked) == (newer, [KEY])
        clock.now += 5
        assert (hot.get(KEY), asked) == (newer, [KEY, KEY])

    def test_a_due_copy_is_answered_no_longer_than_the_grace_nor_past_its_freshness(self, clock: Clock) -> None:
        hot, asked = reading_again(clock)
        hot.put(KEY, served(), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        clock.now += 5
        assert hot.get(KEY) is not None  # due: read again...
        clock.now += REREAD_GRACE  # ...and that read never came back
        assert (hot.get(KEY), len(hot), asked) == (None, 0, [KEY])
        hot.put(KEY, served(), size=2, fresh_until=clock.now + 1, epoch=hot.epoch)
        clock.now += 1  # the version's freshness ends before the tier's time
        assert (hot.get(KEY), asked) == (None, [KEY])  # no read asked for this one

    def test_a_read_replaces_only_the_copy_it_was_asked_for(self, clock: Clock) -> None:
        hot, asked = reading_again(clock)
        hot.put(KEY, served(), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        clock.now += 5
        hot.get(KEY)  # due: read again
        hot.drop(7)  # a change is heard while the read runs...
        newer = served()
        hot.put(KEY, newer, size=2, fresh_until=clock.now + 100, epoch=hot.epoch)  # ...and a request keeps the new
        hot.renew(KEY, asked.copies[0], served(), size=2, fresh_until=clock.now + 100)  # the read, from before it
        hot.forget(KEY, asked.copies[0])
        assert hot.get(KEY) is newer

    def test_a_request_that_judges_its_own_cache_control_takes_no_due_copy(self, clock: Clock) -> None:
        hot, asked = reading_again(clock)
        answer = served()
        hot.put(KEY, answer, size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
        clock.now += 5
        assert (hot.get(KEY, due=False), asked) == (None, [])  # neither served nor read again...
        assert (hot.get(KEY), asked) == (answer, [KEY])  # ...and still there for the next hit

    def test_bounded_in_bytes_oldest_out_first(self, clock: Clock) -> None:
        hot = HotTier(ttl=5.0, max_bytes=3 * (RECORD_OVERHEAD + 1000), clock=clock)
        hot.resume()
        for annotation_id in range(1, 6):
            key = AnnotationKey(annotation_id, Variant.PLAIN)
            hot.put(key, served(annotation_id, b"x" * 1000), size=1000, fresh_until=clock.now + 100, epoch=hot.epoch)
        assert hot.size_bytes <= hot.max_bytes
        assert [hot.get(AnnotationKey(i, Variant.PLAIN)) is not None for i in range(1, 6)] == [False] * 2 + [True] * 3


def script_calls(redis_url: str) -> int:
    """How many scripts (the store's reads and writes) the Redis server has run."""
    with Redis.from_url(redis_url) as client:
        stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


async def get(proxy: Proxy, annotation_id: int = 1) -> tuple[int, Mapping[str, str], Any]:
    response = await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())
    return response.status, response.headers, await response.json()


async def test_a_remembered_404_is_kept_no_longer_than_the_store_remembers_it(clock: Clock) -> None:
    """A cold id's first version is announced to nobody, so a 404 kept hot past its marker would hide it."""
    store = MemoryStore(1024 * 1024, clock=clock)
    metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
    source = ScriptedSource()
    source.script(5, UpstreamReply(404))
    source.script(5, ok(5))
    hot: HotTier[Served] = HotTier(ttl=5.0, max_bytes=10_000, clock=clock)
    service = AnnotationService(store, source, metrics, POLICY, clock=clock, hot=hot)
    service.start()
    try:
        await wait_until(lambda: hot.enabled)
        assert (await service.lookup(5, expand=False, request_id="r")).result == "miss"  # remembered for 30 s
        clock.now += POLICY.negative_ttl - 1
        assert (await service.lookup(5, expand=False, request_id="r")).result == "negative_hit"  # read, kept hot
        clock.now += 2  # the store has forgotten it; the hot tier's 5 s would still run
        served = await service.lookup(5, expand=False, request_id="r")
        assert (served.result, served.entry is not None) == ("miss", True)
    finally:
        await service.close()


class CountingStore(MemoryStore):
    """The in-process store, counting its reads; it can lose what it holds without a word (as Redis evicting a key
    does), or hold its reads until released."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(1024 * 1024, clock=clock)
        self.reads = 0
        self.answered = 0
        self.cancelled = 0
        self.lost = False
        self.held: asyncio.Event | None = None

    async def get(self, key: AnnotationKey) -> Lookup:
        self.reads += 1
        if self.held is not None:
            try:
                await self.held.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        found = None if self.lost else await super().get(key)
        self.answered += 1
        return found


class TestACopyWhoseTimeIsUp:
    """A hit after a copy's time in the tier is answered from it at once, while one read of the store replaces it
    (proxy/hot_copies.py)."""

    @pytest.fixture
    def store(self, clock: Clock) -> CountingStore:
        return CountingStore(clock)

    @pytest.fixture
    async def service(self, store: CountingStore, clock: Clock) -> AsyncIterator[AnnotationService]:
        source = ScriptedSource()
        source.script(5, ok(5))
        metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
        hot: HotTier[Served] = HotTier(ttl=5.0, max_bytes=10_000, clock=clock, draw=lambda: 0.0)  # the whole TTL
        service = AnnotationService(store, source, metrics, POLICY, clock=clock, hot=hot)
        service.start()
        await wait_until(lambda: hot.enabled)
        await service.lookup(5, expand=False, request_id="r")  # a miss: fetched and stored
        await service.lookup(5, expand=False, request_id="r")  # a hit read from the store: kept hot
        yield service
        await service.close()

    async def test_hits_are_answered_at_once_while_one_read_brings_it_up_to_date(
        self, service: AnnotationService, store: CountingStore, clock: Clock
    ) -> None:
        kept = service.from_hot(5, expand=False)
        assert kept is not None
        reads = store.reads
        clock.now += 5  # the copy's time in the tier is up; its version is fresh for minutes
        assert [service.from_hot(5, expand=False) for _ in range(3)] == [kept] * 3  # no wait for the store
        await wait_until(lambda: service.from_hot(5, expand=False) is not kept)  # replaced by what the read found
        assert store.reads == reads + 1
        again = service.from_hot(5, expand=False)
        assert again is not None
        assert again.entry == kept.entry

    async def test_a_copy_the_store_no_longer_holds_goes_and_the_next_request_looks_it_up(
        self, service: AnnotationService, store: CountingStore, clock: Clock
    ) -> None:
        assert service.from_hot(5, expand=False) is not None
        store.lost = True  # evicted, unannounced
        clock.now += 5
        assert service.from_hot(5, expand=False) is not None  # answered while read again
        await wait_until(lambda: len(service.hot) == 0)
        assert service.from_hot(5, expand=False) is None

    @staticmethod
    async def due_with_its_read_held(service: AnnotationService, store: CountingStore, clock: Clock) -> asyncio.Event:
        """The copy's time is up, a hit has started its read again, and the read waits for the event returned."""
        store.held = asyncio.Event()
        reads = store.reads
        clock.now += 5
        assert service.from_hot(5, expand=False) is not None
        await wait_until(lambda: store.reads == reads + 1)
        return store.held

    async def test_a_read_that_hangs_keeps_the_copy_no_longer_than_the_grace(
        self, service: AnnotationService, store: CountingStore, clock: Clock
    ) -> None:
        await self.due_with_its_read_held(service, store, clock)  # never released: it hangs until the close
        clock.now += REREAD_GRACE
        assert service.from_hot(5, expand=False) is None  # requests look the id up themselves from here

    async def test_a_request_with_its_own_cache_control_takes_no_due_copy_and_starts_no_read(
        self, service: AnnotationService, store: CountingStore, clock: Clock
    ) -> None:
        kept, reads = service.from_hot(5, expand=False), store.reads
        clock.now += 5
        asked = service.from_hot(5, expand=False, directives=parse_directives("max-age=600", ""))
        await asyncio.sleep(0)
        assert (asked, store.reads) == (None, reads)  # the lookup judges it: from the store, as before
        assert service.from_hot(5, expand=False) is kept  # the copy is still there for ordinary hits

    async def test_a_read_from_before_a_change_does_not_put_the_older_version_back(
        self, service: AnnotationService, store: CountingStore, clock: Clock
    ) -> None:
        held = await self.due_with_its_read_held(service, store, clock)
        answered = store.answered
        service.hot.drop(5)  # the change is heard while the read waits
        held.set()
        await wait_until(lambda: store.answered == answered + 1)  # the read found the older version
        assert len(service.hot) == 0

    async def test_closing_cancels_the_reads(
        self, service: AnnotationService, store: CountingStore, clock: Clock
    ) -> None:
        await self.due_with_its_read_held(service, store, clock)
        await asyncio.wait_for(service.close(), 5)  # not waiting for the read: cancelling it
        assert store.cancelled == 1


async def test_a_read_that_fails_unexpectedly_is_logged_and_lets_the_copy_go(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async def read(key: AnnotationKey) -> Lookup:
        raise RuntimeError("a bug below the store's failing open")

    hot = whole_ttl(clock)
    HotCopies(hot, read=read, fresh=lambda found: None, policy=POLICY, clock=clock)
    hot.put(KEY, served(), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
    clock.now += 5
    assert hot.get(KEY) is not None
    await wait_until(lambda: len(hot) == 0)
    assert [record.getMessage() for record in caplog.records] == ["reading a hot copy again failed"]


async def test_closed_hot_copies_read_nothing_again(clock: Clock) -> None:
    reads: list[AnnotationKey] = []

    async def read(key: AnnotationKey) -> Lookup:
        reads.append(key)
        return None

    hot = whole_ttl(clock)
    copies = HotCopies(hot, read=read, fresh=lambda found: None, policy=POLICY, clock=clock)
    hot.put(KEY, served(), size=2, fresh_until=clock.now + 100, epoch=hot.epoch)
    await copies.close()
    clock.now += 5
    assert hot.get(KEY) is not None  # answered within the grace...
    await asyncio.sleep(0)
    assert reads == []  # ...but read again by nobody


class TestThroughTheProxy:
    @pytest.mark.redis
    async def test_hits_after_the_first_do_not_touch_redis(self, make_proxy: ProxyFactory, redis_url: str) -> None:
        proxy = await make_proxy(redis_url=redis_url)
        proxy.fake.add_annotation()
        hot = proxy.client.app[SERVICE].hot
        await wait_until(lambda: hot.enabled)
        await get(proxy)  # miss: read, fetch, store
        # Hits read from Redis until one is kept hot: a copy read before this replica has heard an announcement
        # still under way is refused (it could predate what was announced).
        for _ in range(100):
            await get(proxy)
            if hot.get(AnnotationKey(1, Variant.PLAIN)) is not None:
                break
        scripts = script_calls(redis_url)
        hits = proxy.metric("cache_requests_total", result="hit")
        for _ in range(5):
            status, headers, _ = await get(proxy)
            assert (status, status_of(headers)) == (200, "annotation-proxy; hit")
        assert script_calls(redis_url) == scripts
        assert proxy.metric("cache_requests_total", result="hit") == hits + 5

    @pytest.mark.redis
    async def test_a_change_on_one_replica_is_dropped_by_the_others_at_once(
        self, make_proxy: ProxyFactory, redis_url: str
    ) -> None:
        settings: dict[str, Any] = {"redis_url": redis_url, "proxy_webhook_secret": SECRET, "proxy_hot_ttl": 300}
        one, other = await make_proxy(**settings), await make_proxy(**settings)
        for replica in (one, other):
            await wait_until(lambda replica=replica: replica.client.app[SERVICE].hot.enabled)
        fake = one.fake
        fake.add_annotation()
        for replica in (one, other, other):  # the other's second GET is kept hot
            await get(replica)
        assert len(other.client.app[SERVICE].hot) == 1

        changed = fake.update_annotation(1, ground_truth=True)
        webhook = await one.client.post(
            "/webhooks/label-studio",
            json=annotation_event("ANNOTATION_UPDATED", changed),
            headers={"X-Webhook-Secret": SECRET},
        )
        assert webhook.status == 200
        # The announcement crosses Redis: wait for it to arrive, not for any TTL.
        await wait_until(lambda: len(other.client.app[SERVICE].hot) == 0)
        await wait_until(lambda: len(fake.annotation_gets(1)) == 2)  # the webhook's re-fetch
        status, _, body = await get(other)
        assert (status, body["ground_truth"], body["updated_at"]) == (200, True, changed["updated_at"])


@pytest.mark.redis
@pytest.mark.parametrize("after", [0.0, 0.001, 0.003, 0.01])
async def test_closing_stops_the_listener_whenever_it_comes(redis_url: str, clock: Clock, after: float) -> None:
    """redis-py swallows a cancellation that lands while it connects; close() must end the listener anyway."""
    store = open_redis_store(redis_url, KeyScheme("test:"), timeout=0.25)
    metrics = Metrics.create(CollectorRegistry(), version="test", process_metrics=False)
    hot = HotTier(ttl=5.0, max_bytes=10_000, clock=clock)
    service = AnnotationService(store, ScriptedSource(), metrics, POLICY, clock=clock, hot=hot)
    service.start()
    await asyncio.sleep(after)
    await asyncio.wait_for(service.close(), timeout=5)
    await store.close()


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["cluster", "sentinel"])
async def test_on_a_cluster_or_sentinel_topology_the_tier_hears_changes_and_hits_skip_redis(
    make_proxy: ProxyFactory, request: pytest.FixtureRequest, mode: str
) -> None:
    if mode == "cluster":
        url: str = request.getfixturevalue("redis_cluster")
        with RedisCluster.from_url(url) as cluster:
            cluster.flushall()
    else:
        topology: SentinelTopology = request.getfixturevalue("redis_sentinel")
        with topology.client(topology.primary) as primary:
            primary.flushall()
        url = topology.url
    settings: dict[str, Any] = {"redis_url": url, "proxy_redis_mode": mode}
    settings |= {"proxy_webhook_secret": SECRET, "proxy_hot_ttl": 300}
    one, other = await make_proxy(**settings), await make_proxy(**settings)
    for replica in (one, other):
        await wait_until(lambda replica=replica: replica.client.app[SERVICE].hot.enabled)
    fake = one.fake
    fake.add_annotation()
    for replica in (one, other, other):
        assert (await get(replica))[0] == 200
    assert status_of((await get(other))[1]) == "annotation-proxy; hit"
    assert len(other.client.app[SERVICE].hot) == 1
    changed = fake.update_annotation(1, ground_truth=True)
    event = annotation_event("ANNOTATION_UPDATED", changed)
    webhook = await one.client.post("/webhooks/label-studio", json=event, headers={"X-Webhook-Secret": SECRET})
    assert webhook.status == 200
    await wait_until(lambda: len(other.client.app[SERVICE].hot) == 0)
    await wait_until(lambda: len(fake.annotation_gets(1)) == 2)
    status, _, body = await get(other)
    assert (status, body["ground_truth"]) == (200, True)


class BrokenThenFollowed(MemoryStore):
    """A store whose announcements fail once with a bug (not a CacheError), then are heard."""

    def __init__(self) -> None:
        super().__init__(max_bytes=1024)
        self.attempts = 0

    async def changes(self) -> AsyncIterator[int | Superseded | None]:
        self.attempts += 1
        if self.attempts == 1:
            raise RuntimeError("a bug in following")
        yield None
        await asyncio.Event().wait()


async def test_a_bug_in_following_the_changes_does_not_end_the_following(clock: Clock) -> None:
    """The follower caught only CacheError: anything else ended its task, and the tier stayed as it was for good
    (off, or on without hearing changes)."""
    hot: HotTier[Served] = HotTier(ttl=5.0, max_bytes=10_000, clock=clock)
    hot.suspend()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    follower = ChangeFollower(BrokenThenFollowed(), hot, sleep=sleep)
    follower.start()
    try:
        await wait_until(lambda: hot.enabled)
        assert slept == [RETRY_MIN]
    finally:
        await follower.close()


class FailingOnEveryMessage(MemoryStore):
    """A store whose announcements are subscribed to, then fail at the first message, every time; how long each
    subscription lasts is the test's ``lasts`` seconds on ``steady``."""

    def __init__(self, steady: Clock, lasts: float) -> None:
        super().__init__(max_bytes=1024)
        self.steady = steady
        self.lasts = lasts

    async def changes(self) -> AsyncIterator[int | Superseded | None]:
        yield None
        self.steady.now += self.lasts
        raise RuntimeError("a bug in handling a message")


@pytest.mark.parametrize(
    ("lasts", "expected"),
    [
        # Retried, and logged with a traceback, every RETRY_MIN for good: backoff was reset at each subscription.
        (0.0, [RETRY_MIN, 2 * RETRY_MIN, 4 * RETRY_MIN, 8 * RETRY_MIN, 16 * RETRY_MIN, RETRY_MAX, RETRY_MAX]),
        # Subscriptions that had worked for a while: each failure is a new one, retried soon.
        (RETRY_MAX, [RETRY_MIN] * 7),
    ],
)
async def test_a_subscription_that_fails_at_once_is_retried_ever_later(
    steady: Clock, lasts: float, expected: list[float]
) -> None:
    slept: list[float] = []
    enough = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == len(expected):
            enough.set()
            await asyncio.Event().wait()

    hot: HotTier[Served] = HotTier(ttl=5.0, max_bytes=10_000, clock=steady)
    follower = ChangeFollower(FailingOnEveryMessage(steady, lasts), hot, sleep=sleep, monotonic=steady)
    follower.start()
    try:
        await asyncio.wait_for(enough.wait(), 5)
        assert slept == expected
    finally:
        await follower.close()

"""One contract, every store: the memory store, and the Redis store on fakeredis, on a real redis-server (over TCP,
a Unix socket and TLS), on a 3-primary Redis Cluster and on a primary found through 3 sentinels."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.cluster import RedisCluster as SyncRedisCluster

from proxy.breaker import CircuitBreaker, State
from proxy.budget import ByteBudget
from proxy.cache import (
    AnnotationKey,
    AnnotationStore,
    CachedAnnotation,
    KeyScheme,
    MemoryStore,
    Missing,
    RedisStore,
    Variant,
)
from proxy.cache.breaker import CircuitBreakingStore
from proxy.cache.keyspace import FENCE
from proxy.cache.memory import RECORD_OVERHEAD, TASK_MEMBER_SIZE
from proxy.cache.redis_store import LARGE_ENTRY, open_redis_store
from proxy.errors import CacheBusy, CacheError
from tests.support.ports import free_port
from tests.support.redis_servers import RedisServer, SentinelTopology, running_redis

PREFIX = "test-proxy:"
TTL = 60.0
BUDGET = 16 * 1024 * 1024  # the memory budget Redis stores read large entries in


def entry(annotation_id: int = 7, version: int = 1_000, body: bytes | None = None) -> CachedAnnotation:
    return CachedAnnotation(
        annotation_id=annotation_id,
        version=version,
        stored_at=1_700_000_000.5,
        body=body if body is not None else b'{"id":%d,"v":%d}' % (annotation_id, version),
        project=3,
        task=11,
    )


# When a fetch that saw a 404 began: later than every version these tests cache.
LATER = 2_000_000_000 * 1_000_000

PLAIN = AnnotationKey(7, Variant.PLAIN)
EXPANDED = AnnotationKey(7, Variant.EXPANDED)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def unix_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the session's own listening on a Unix socket too: its ``unix://`` URL."""
    socket = tmp_path_factory.mktemp("redis-unix") / "redis.sock"
    with running_redis("--unixsocket", str(socket), "--unixsocketperm", "700"):
        yield f"unix://{socket}"


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the session's own serving TLS with a self-signed certificate for 127.0.0.1: its
    ``rediss://`` URL, which trusts that certificate (and checks the host name against it)."""
    directory = tmp_path_factory.mktemp("redis-tls")
    cert, key = directory / "redis.crt", directory / "redis.key"
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed: `apt-get install openssl` (.ci/run does)")
    subprocess.run(  # noqa: S603 - a fixed binary and arguments
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    tls = ("--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    with running_redis(*tls, "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"):
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"


@pytest.fixture(params=["memory", "fakeredis", "redis", "redis-unix", "redis-tls", "redis-cluster", "redis-sentinel"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AnnotationStore]:
    kind: str = request.param
    if kind == "memory":
        yield MemoryStore(4 * 1024 * 1024)
        return
    if kind == "redis-sentinel":  # PROXY_REDIS_MODE=sentinel: the primary found through the sentinels
        topology: SentinelTopology = request.getfixturevalue("redis_sentinel")
        with topology.client(topology.primary) as primary:
            primary.flushall()
        sentinel_store = open_redis_store(
            topology.url, KeyScheme(PREFIX), timeout=1.0, mode="sentinel", bodies=ByteBudget(BUDGET)
        )
        yield sentinel_store
        await sentinel_store.close()
        return
    if kind == "redis-cluster":  # PROXY_REDIS_MODE=cluster
        url = request.getfixturevalue("redis_cluster")
        with SyncRedisCluster.from_url(url) as sync_cluster:
            sync_cluster.flushall()
        cluster_store = open_redis_store(url, KeyScheme(PREFIX), timeout=1.0, mode="cluster", bodies=ByteBudget(BUDGET))
        yield cluster_store
        await cluster_store.close()
        return
    if kind in ("redis-unix", "redis-tls"):  # REDIS_URL=unix:// or rediss://, through the proxy's own from_url
        url = request.getfixturevalue("unix_redis" if kind == "redis-unix" else "tls_redis")
        with SyncRedis.from_url(url) as sync_client:
            sync_client.flushall()
        unix_store = open_redis_store(url, KeyScheme(PREFIX), timeout=1.0, bodies=ByteBudget(BUDGET))
        yield unix_store
        await unix_store.close()
        return
    client: Redis
    if kind == "fakeredis":
        client = fakeredis.FakeAsyncRedis()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = Redis.from_url(server.url)
        await client.flushall()
    store = RedisStore(client, KeyScheme(PREFIX), bodies=ByteBudget(BUDGET))
    yield store
    await store.close()


class TestStoreContract:
    async def test_unknown_annotation_is_a_miss(self, store: AnnotationStore) -> None:
        assert await store.get(PLAIN) is None

    async def test_stored_entry_reads_back_whole(self, store: AnnotationStore) -> None:
        stored = entry()
        assert await store.put(PLAIN, stored, TTL) is True
        assert await store.get(PLAIN) == stored

    async def test_a_large_entry_reads_back_whole(self, store: AnnotationStore) -> None:
        """Past LARGE_ENTRY a Redis store reads in two steps, making room in its memory budget first."""
        body = b'{"id":7,"result":"' + b"x" * (LARGE_ENTRY * 3) + b'"}'
        stored = entry(body=body)
        assert await store.put(PLAIN, stored, TTL) is True
        assert await store.get(PLAIN) == stored
        assert await store.get(EXPANDED) is None

    async def test_body_bytes_survive_exactly(self, store: AnnotationStore) -> None:
        body = '{"id":7,"created_ago":"1\u00a0day","r":"\\n\n"}'.encode()
        await store.put(PLAIN, entry(body=body), TTL)
        got = await store.get(PLAIN)
        assert isinstance(got, CachedAnnotation)
        assert got.body == body

    async def test_variants_are_cached_apart(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(body=b"plain"), TTL)
        assert await store.get(EXPANDED) is None
        await store.put(EXPANDED, entry(body=b"expanded"), TTL)
        plain, expanded = await store.get(PLAIN), await store.get(EXPANDED)
        assert isinstance(plain, CachedAnnotation)
        assert isinstance(expanded, CachedAnnotation)
        assert (plain.body, expanded.body) == (b"plain", b"expanded")

    async def test_newer_version_replaces_older(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(version=1_000), TTL)
        assert await store.put(PLAIN, entry(version=2_000), TTL) is True
        assert await store.get(PLAIN) == entry(version=2_000)

    async def test_older_version_never_replaces_newer(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(version=2_000), TTL)
        assert await store.put(PLAIN, entry(version=1_000), TTL) is False
        assert await store.get(PLAIN) == entry(version=2_000)

    async def test_same_version_with_new_body_replaces_it(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(body=b"before"), TTL)
        assert await store.put(PLAIN, entry(body=b"after"), TTL) is True
        got = await store.get(PLAIN)
        assert isinstance(got, CachedAnnotation)
        assert got.body == b"after"

    async def test_newer_version_of_one_variant_hides_older_version_of_the_other(self, store: AnnotationStore) -> None:
        await store.put(EXPANDED, entry(version=1_000), TTL)
        await store.put(PLAIN, entry(version=2_000), TTL)
        assert await store.get(EXPANDED) is None

    async def test_a_burst_of_misses_answers_each_call_its_own(self, store: AnnotationStore) -> None:
        """Calls made together (a Redis store sends them as one pipeline): each claim, write and read is the one
        its caller would have had alone, a large entry and a remembered 404 among them."""
        ids = range(100, 116)
        large = b'{"id":107,"result":"' + b"x" * (LARGE_ENTRY + 1) + b'"}'
        entries = {n: entry(annotation_id=n, body=large if n == 107 else None) for n in ids if n != 111}
        keys = {n: AnnotationKey(n, Variant.PLAIN) for n in ids}
        claimed = await asyncio.gather(*(store.get_or_claim(keys[n], TTL) for n in ids))
        assert claimed == [(None, True)] * len(ids)
        written = await asyncio.gather(
            *(store.put(keys[n], entries[n], TTL, release=True) for n in entries),
            store.put_missing(111, TTL, since=LATER, release=Variant.PLAIN),
        )
        assert written == [True] * len(ids)
        read = await asyncio.gather(*(store.get(keys[n]) for n in ids))
        assert read == [entries.get(n, Missing(LATER)) for n in ids]

    async def test_racing_writes_keep_the_newest_whatever_the_order(self, store: AnnotationStore) -> None:
        versions = [5_000, 1_000, 9_000, 3_000, 7_000, 2_000]
        await asyncio.gather(*(store.put(PLAIN, entry(version=v), TTL) for v in versions))
        assert await store.get(PLAIN) == entry(version=9_000)

    async def test_remembered_404(self, store: AnnotationStore) -> None:
        await store.put_missing(7, TTL, since=1_795_868_853_123_456)
        # With when it was seen: the answer's Age is counted from it.
        assert await store.get(PLAIN) == Missing(1_795_868_853_123_456)
        assert await store.get(EXPANDED) == Missing(1_795_868_853_123_456)

    async def test_404_drops_cached_versions(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(), TTL)
        assert await store.put_missing(7, TTL, since=LATER) is True
        assert isinstance(await store.get(PLAIN), Missing)

    async def test_zero_negative_ttl_drops_versions_but_remembers_nothing(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(), TTL)
        await store.put_missing(7, 0, since=LATER)
        assert await store.get(PLAIN) is None

    async def test_stored_entry_clears_remembered_404(self, store: AnnotationStore) -> None:
        await store.put_missing(7, TTL, since=0)
        await store.put(PLAIN, entry(), TTL)
        assert await store.get(PLAIN) == entry()

    async def test_annotations_do_not_share_entries(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(annotation_id=7), TTL)
        await store.put_missing(8, TTL, since=0)
        assert isinstance(await store.get(AnnotationKey(8, Variant.PLAIN)), Missing)
        assert await store.get(PLAIN) == entry(annotation_id=7)

    async def test_ping_answers(self, store: AnnotationStore) -> None:
        await store.ping()

    async def test_invalidating_to_a_newer_version_hides_the_cached_one_and_fences_older_writes(
        self, store: AnnotationStore
    ) -> None:
        await store.put(PLAIN, entry(version=1_000), TTL)
        await store.invalidate(7, 2_000, TTL)
        assert await store.get(PLAIN) is None
        assert await store.put(PLAIN, entry(version=1_000), TTL) is False  # the slow, older fetch
        assert await store.put(PLAIN, entry(version=2_000), TTL) is True
        assert await store.get(PLAIN) == entry(version=2_000)

    async def test_invalidating_the_cached_version_drops_its_bodies(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(version=1_000), TTL)
        await store.put(EXPANDED, entry(version=1_000), TTL)
        await store.invalidate(7, 1_000, TTL)
        assert await store.get(PLAIN) is None
        assert await store.get(EXPANDED) is None
        assert await store.put(PLAIN, entry(version=1_000, body=b"refetched"), TTL) is True

    async def test_invalidating_to_an_older_version_changes_nothing(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(version=2_000), TTL)
        await store.invalidate(7, 1_000, TTL)
        assert await store.get(PLAIN) == entry(version=2_000)

    async def test_invalidating_drops_a_remembered_404(self, store: AnnotationStore) -> None:
        await store.put_missing(7, TTL, since=0)
        await store.invalidate(7, 1_000, TTL)
        assert await store.get(PLAIN) is None

    async def test_a_200_from_a_fetch_older_than_a_remembered_404_is_refused(self, store: AnnotationStore) -> None:
        # The 200's fetch began (stored_at) before the fetch that saw the 404: it may predate a deletion.
        began_404_fetch = round(entry().stored_at * 1_000_000) + 1
        await store.put_missing(7, TTL, since=began_404_fetch)
        assert await store.put(PLAIN, entry(), TTL) is False
        assert isinstance(await store.get(PLAIN), Missing)
        later = CachedAnnotation(annotation_id=7, version=1_000, stored_at=entry().stored_at + 1, body=b"{}")
        assert await store.put(PLAIN, later, TTL) is True  # began after the 404: created since
        assert await store.get(PLAIN) == later

    async def test_a_404_fetched_before_a_known_version_changes_nothing(self, store: AnnotationStore) -> None:
        # ANNOTATION_CREATED made version 2_000 known; a fetch that began before it then saw a 404.
        await store.invalidate(7, 2_000, TTL)
        assert await store.put_missing(7, TTL, since=1_999) is False
        assert await store.get(PLAIN) is None  # not Missing: the next request asks Label Studio
        assert await store.put(PLAIN, entry(version=2_000), TTL) is True
        assert await store.put_missing(7, TTL, since=1_999) is False
        assert await store.get(PLAIN) == entry(version=2_000)

    async def test_a_fenced_404_refuses_every_later_write(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(version=1_000), TTL)
        await store.put_missing(7, TTL, since=FENCE)
        assert await store.put(PLAIN, entry(version=1_000), TTL) is False
        assert await store.put(PLAIN, entry(version=2**62), TTL) is False
        assert isinstance(await store.get(PLAIN), Missing)

    async def test_a_change_announced_after_a_deletion_changes_nothing(self, store: AnnotationStore) -> None:
        """Label Studio's webhooks may arrive out of order (an edit just before the delete), or be replayed: an
        ANNOTATION_UPDATED after ANNOTATIONS_DELETED pointed back at the deleted version's bodies, still in the
        store, and served them as fresh hits."""
        await store.put(PLAIN, entry(version=1_000), TTL)
        await store.put_missing(7, TTL, since=FENCE)
        await store.invalidate(7, 1_000, TTL)
        assert isinstance(await store.get(PLAIN), Missing)
        await store.invalidate(7, 2_000, TTL)
        assert isinstance(await store.get(PLAIN), Missing)
        assert await store.put(PLAIN, entry(version=2_000), TTL) is False

    async def test_drop_forgets_versions_and_404s(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(version=2_000), TTL)
        await store.drop(7)
        assert await store.get(PLAIN) is None
        await store.put_missing(7, TTL, since=LATER)
        await store.drop(7)
        assert await store.get(PLAIN) is None
        assert await store.put(PLAIN, entry(version=1_000), TTL) is True

    async def test_task_index_lists_cached_annotations_of_a_task(self, store: AnnotationStore) -> None:
        await store.put(PLAIN, entry(annotation_id=7), TTL)  # task 11
        await store.put(AnnotationKey(8, Variant.PLAIN), entry(annotation_id=8), TTL)  # task 11
        other = CachedAnnotation(annotation_id=9, version=1, stored_at=0.0, body=b"{}", task=12)
        await store.put(AnnotationKey(9, Variant.PLAIN), other, TTL)
        assert await store.task_deleted(11, TTL) == {7, 8}
        assert await store.task_deleted(12, TTL) == {9}
        assert await store.task_deleted(11, TTL) == set()  # forgotten with the deletion
        assert await store.task_deleted(404, TTL) == set()

    async def test_a_fetch_stored_after_its_task_was_deleted_is_remembered_deleted(
        self, store: AnnotationStore
    ) -> None:
        """A fetch in flight when TASKS_DELETED came: the task's index did not list the annotation yet, and its
        write stored it, served as a hit for PROXY_CACHE_TTL after the deletion."""
        assert await store.task_deleted(11, TTL) == set()
        assert await store.put(PLAIN, entry(annotation_id=7), TTL) is False  # of task 11
        assert isinstance(await store.get(PLAIN), Missing)
        later = replace(entry(annotation_id=7), stored_at=entry().stored_at + 3600)
        assert await store.put(PLAIN, later, TTL) is False  # remembered as deleted, not as a fetch's 404
        other = CachedAnnotation(annotation_id=9, version=1, stored_at=0.0, body=b"{}", task=12)
        assert await store.put(AnnotationKey(9, Variant.PLAIN), other, TTL) is True  # another task's

    async def test_entry_metadata_survives(self, store: AnnotationStore) -> None:
        rich = CachedAnnotation(
            annotation_id=7,
            version=5,
            stored_at=1.25,
            body=b'{"created_ago":"0 minutes"}',
            etag='W/"abc"',
            created_at=1_795_868_853_279_095,
            created_ago_span=(15, 26),
        )
        await store.put(PLAIN, rich, TTL)
        assert await store.get(PLAIN) == rich


class TestRedisKeys:
    """What only the Redis store has: key layout, expiry and hash tags."""

    @pytest.fixture
    async def client(self) -> AsyncIterator[Any]:
        client = fakeredis.FakeAsyncRedis()
        yield client
        await client.aclose()

    async def test_every_key_expires_and_shares_one_hash_tag(self, client: Any) -> None:
        store = RedisStore(client, KeyScheme(PREFIX))
        await store.put(PLAIN, entry(), TTL)
        await store.put(EXPANDED, entry(), TTL)
        await store.put_missing(8, 30, since=0)
        keys = sorted(k.decode() for k in await client.keys("*"))
        assert keys == [
            "test-proxy:{a:7}:latest",
            "test-proxy:{a:7}:v:00000000000000001000:expand",
            "test-proxy:{a:7}:v:00000000000000001000:plain",
            "test-proxy:{a:8}:missing",
            "test-proxy:{t:11}:annotations",
        ]
        for key in keys:
            ttl_ms = await client.pttl(key)
            assert 0 < ttl_ms <= 60_000

    async def test_task_index_expires_with_the_longest_entry(self, client: Any) -> None:
        store = RedisStore(client, KeyScheme(PREFIX))
        await store.put(PLAIN, entry(), 10)
        await store.put(AnnotationKey(8, Variant.PLAIN), entry(annotation_id=8), 60)
        await store.put(AnnotationKey(9, Variant.PLAIN), entry(annotation_id=9), 20)
        assert 50_000 < await client.pttl("test-proxy:{t:11}:annotations") <= 60_000

    async def test_values_are_json_and_bytes_not_pickle(self, client: Any) -> None:
        store = RedisStore(client, KeyScheme(PREFIX))
        await store.put(PLAIN, entry(body=b'{"id":7}'), TTL)
        raw = await client.get("test-proxy:{a:7}:v:00000000000000001000:plain")
        header, _, body = raw.partition(b"\n")
        assert header.startswith(b'{"f":1,')
        assert body == b'{"id":7}'

    async def test_garbage_in_redis_is_a_cache_error_not_a_body(self, client: Any) -> None:
        store = RedisStore(client, KeyScheme(PREFIX))
        await store.put(PLAIN, entry(), TTL)
        await client.set("test-proxy:{a:7}:v:00000000000000001000:plain", b"\x80\x04garbage")
        with pytest.raises(CacheError):
            await store.get(PLAIN)

    async def test_unreachable_redis_raises_cache_error(self) -> None:
        store = open_redis_store(f"redis://127.0.0.1:{free_port()}/0", KeyScheme(PREFIX), timeout=0.2)
        try:
            with pytest.raises(CacheError):
                await store.get(PLAIN)
            with pytest.raises(CacheError):
                await store.put(PLAIN, entry(), TTL)
            with pytest.raises(CacheError):
                await store.ping()
        finally:
            await store.close()


class TestRedisFailures:
    """How the Redis store fails: always as CacheError, and as CacheBusy (which the breaker ignores) when a Redis
    Cluster slot is on the move."""

    async def test_a_client_library_tripping_over_itself_is_a_cache_error_not_a_500(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # redis-py's cluster client can use a connection another task has just closed and raise AttributeError
        # (seen while slots move). Whatever the client raises must fail open.
        client = fakeredis.FakeAsyncRedis()
        store = RedisStore(client, KeyScheme(PREFIX))

        async def broken(*args: object, **kwargs: object) -> object:
            raise AttributeError("'NoneType' object has no attribute 'writelines'")

        monkeypatch.setattr(client.connection_pool, "get_connection", broken)  # what every command goes through
        try:
            with pytest.raises(CacheError, match="redis read failed: AttributeError"):
                await store.get(PLAIN)
        finally:
            await client.aclose()

    async def test_a_slot_being_migrated_is_busy_and_the_breaker_does_not_count_it(self, redis_cluster: str) -> None:
        keys = KeyScheme(PREFIX)
        with SyncRedisCluster.from_url(redis_cluster) as cluster:
            cluster.flushall()
            slot = cluster.keyslot(keys.pointer(7))
            source = cluster.nodes_manager.get_node_from_slot(slot)
            target = next(node for node in cluster.get_primaries() if node.name != source.name)
            source_id = cluster.cluster_myid(source)
            target_id = cluster.cluster_myid(target)
            store = open_redis_store(redis_cluster, keys, timeout=1.0, mode="cluster")
            breaker = CircuitBreaker(threshold=1, cooldown=60.0)
            guarded = CircuitBreakingStore(store, breaker)
            try:
                await guarded.put(PLAIN, entry(), TTL)
                # The slot starts moving: the pointer is still on the source, the 404 marker is nowhere yet, so a read
                # (which needs both) is redirected and refused with TRYAGAIN until the move is over.
                cluster.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id, target_nodes=target)
                cluster.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id, target_nodes=source)
                try:
                    with pytest.raises(CacheBusy):
                        await guarded.get(PLAIN)
                    assert breaker.state is State.CLOSED  # a moving slot says nothing about Redis's health
                finally:
                    for node in (source, target):
                        cluster.execute_command("CLUSTER SETSLOT", slot, "STABLE", target_nodes=node)
                assert await guarded.get(PLAIN) == entry()  # the move called off: a hit again
            finally:
                await store.close()


class TestMemoryStore:
    """What only the memory store has: its own clock and its byte bound."""

    async def test_entries_expire_with_their_ttl(self) -> None:
        clock = ManualClock()
        store = MemoryStore(1024 * 1024, clock=clock)
        await store.put(PLAIN, entry(), 10)
        await store.put_missing(8, 5, since=0)
        clock.now += 5
        assert await store.get(AnnotationKey(8, Variant.PLAIN)) is None
        assert await store.get(PLAIN) == entry()
        clock.now += 5
        assert await store.get(PLAIN) is None

    async def test_stays_within_its_byte_bound_evicting_least_recently_used(self) -> None:
        store = MemoryStore(64 * 1024)
        body = b"x" * 1000
        for annotation_id in range(1, 500):
            await store.put(AnnotationKey(annotation_id, Variant.PLAIN), entry(annotation_id, body=body), TTL)
            assert store.size_bytes <= 64 * 1024
        assert await store.get(AnnotationKey(1, Variant.PLAIN)) is None
        assert await store.get(AnnotationKey(499, Variant.PLAIN)) is not None

    async def test_remembered_404s_are_bounded_too(self) -> None:
        store = MemoryStore(64 * 1024)
        for annotation_id in range(1, 10_000):
            await store.put_missing(annotation_id, TTL, since=0)
        assert store.size_bytes <= 64 * 1024

    async def test_a_task_with_thousands_of_annotations_is_indexed_in_place_and_counted(self) -> None:
        store = MemoryStore(16 * 1024 * 1024)
        for annotation_id in range(1, 5_001):  # every entry() is of task 11
            await store.put(AnnotationKey(annotation_id, Variant.PLAIN), entry(annotation_id), TTL)
        bodies = sum(len(entry(i).body) for i in range(1, 5_001))
        records = 2 * 5_000 + 1  # a version and a pointer each, one index
        assert store.size_bytes == bodies + records * RECORD_OVERHEAD + 5_000 * TASK_MEMBER_SIZE
        assert await store.task_deleted(11, TTL) == set(range(1, 5_001))

    async def test_an_entry_larger_than_the_whole_cache_is_not_stored(self) -> None:
        store = MemoryStore(64 * 1024)
        assert await store.put(PLAIN, entry(body=b"x" * 70_000), TTL) is False
        assert await store.get(PLAIN) is None

    async def test_after_a_restart_the_breaker_closes_for_good_however_many_connections_died(self) -> None:
        # A restarted Redis leaves every idle pooled connection dead. Each would fail once when next used, and
        # three such failures in a row would open the circuit again just after it closed: when it opens, the
        # store drops its idle connections, so after the restart every operation succeeds.
        clock = ManualClock()
        breaker = CircuitBreaker(threshold=3, cooldown=5.0, clock=clock)
        with running_redis() as first:
            port = first.port
            store = open_redis_store(first.url, KeyScheme(PREFIX), timeout=1.0)
            guarded = CircuitBreakingStore(store, breaker)
            try:
                await asyncio.gather(*(guarded.get(PLAIN) for _ in range(12)))  # twelve pooled connections
                first.process.kill()
                first.process.wait(10)
                for _ in range(3):
                    with pytest.raises(CacheError):
                        await guarded.get(PLAIN)
                assert breaker.state is State.OPEN
                with running_redis(port=port):
                    clock.now += 5.0
                    assert await guarded.get(PLAIN) is None  # the probe
                    assert breaker.state is State.CLOSED
                    answers = await asyncio.gather(*(guarded.get(PLAIN) for _ in range(12)), return_exceptions=True)
                    assert answers == [None] * 12
                    assert breaker.state is State.CLOSED
            finally:
                await store.close()

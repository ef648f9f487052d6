"""The proxy on the Redis topologies users scale out with, while they change under load: a Sentinel primary killed
(failover) and a Redis Cluster slot moved from one node to another (resharding).

Each test runs a real proxy process (``PROXY_REDIS_MODE=sentinel`` or ``cluster``) over its own topology of
redis-server processes on free ports, keeps a steady load on it (every answer checked against what Label Studio
serves), changes the topology, and asserts what users see: every request answered with the right body, and the
cache in use again afterwards, on the topology as it now is. Waits are conditions polled with a deadline; the
figures are printed (``pytest -s``) and attached to the report (``record_property``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis import Redis

from proxy.cache import KeyScheme
from tests.fakes.label_studio import FakeLabelStudio
from tests.support.load import SteadyLoad, six_annotations
from tests.support.processes import FETCHED, HIT, Answer, ProxyProcess, proxy_process
from tests.support.proxies import ServerFactory
from tests.support.redis_servers import (
    SENTINEL_SERVICE,
    RedisCluster,
    RedisServer,
    SentinelTopology,
    running_redis_cluster,
    running_redis_sentinel,
    wait_for,
)

pytestmark = pytest.mark.redis

PREFIX = "annotation-proxy:"  # the default PROXY_KEY_PREFIX, which the proxies here use
FAILOVER_LIMIT = 60.0  # a deadline for the sentinels' promotion, not an expectation
RECOVERY_LIMIT = 30.0


def proxy_on(
    upstream: TestServer, fake: FakeLabelStudio, tmp_path: Path, redis_url: str, mode: str, **settings: str
) -> AbstractAsyncContextManager[ProxyProcess]:
    """A proxy process in front of ``fake``, caching in the topology at ``redis_url`` (``mode``)."""
    return proxy_process(
        upstream.make_url("/"),
        fake.legacy_token,
        tmp_path / "proxy.log",
        REDIS_URL=redis_url,
        PROXY_REDIS_MODE=mode,
        PROXY_REDIS_TIMEOUT="0.2",
        **settings,
    )


def report(record_property: Callable[[str, Any], None], title: str, figures: dict[str, str]) -> None:
    for name, text in figures.items():
        print(f"{title}, {name}: {text}")
        record_property(f"{title}, {name}", text)


async def fetch_until_hit(proxy: ProxyProcess, session: aiohttp.ClientSession, annotation_id: int) -> list[str]:
    """The Cache-Status of GETs in a row for ``annotation_id``, until a hit (a write the old primary refused, or one
    the breaker skipped, costs another fetch; 5 at most)."""
    statuses: list[str] = []
    while HIT not in statuses and len(statuses) < 5:
        answer = await proxy.get(session, annotation_id)
        assert isinstance(answer, Answer), answer
        assert answer.status == 200, answer
        statuses.append(answer.cache_status)
    return statuses


def demoted(topology: SentinelTopology) -> bool:
    with topology.client(topology.primary) as old:
        return bool(old.info("replication")["role"] == "slave")


@pytest.mark.parametrize("how", ["killed", "handed over"])
async def test_sentinel_failover_under_load_requests_go_on_and_caching_resumes_on_the_new_primary(
    how: str, aiohttp_server: ServerFactory, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """``killed``: SIGKILL, and the sentinels promote the replica. ``handed over``: ``SENTINEL FAILOVER`` (what an
    operator does for maintenance); the old primary stays up as a replica, and refuses writes."""
    fake, upstream, bodies = await six_annotations(aiohttp_server)
    with running_redis_sentinel() as topology:
        async with (
            aiohttp.ClientSession() as session,
            proxy_on(upstream, fake, tmp_path, topology.url, "sentinel") as proxy,
        ):
            load = SteadyLoad(proxy, session, bodies)
            async with load.running(workers=8):
                await load.until(lambda: load.stats["before"].hits >= 200, 30, "hits before the failover")
                upstream_before = len(fake.annotation_gets())

                if how == "killed":
                    topology.primary.process.kill()  # no goodbye to anyone
                    await asyncio.to_thread(topology.primary.process.wait, 10)
                else:
                    with topology.sentinel_client() as sentinel:
                        sentinel.execute_command("SENTINEL FAILOVER", SENTINEL_SERVICE)
                killed_at = time.monotonic()
                await load.enter("failover: until the sentinels promote the replica")
                new_primary_port = None
                while new_primary_port != topology.replica.port:
                    assert time.monotonic() - killed_at < FAILOVER_LIMIT, f"no promotion; {load.report()}"
                    await asyncio.sleep(0.1)  # polling the sentinels, not a timing assertion
                    new_primary_port = await asyncio.to_thread(topology.primary_port)
                promoted_after = time.monotonic() - killed_at
                upstream_during = len(fake.annotation_gets()) - upstream_before

                await load.enter("after: until the first hit")
                first_hit = await load.until(
                    lambda: load.stats["after: until the first hit"].hits > 0, RECOVERY_LIMIT, "a hit again"
                )
                await load.enter("after: hits resumed")
                await load.until(lambda: load.stats["after: hits resumed"].requests >= 300, 30, "requests after")

            if how == "handed over":
                # The old primary keeps taking writes until the sentinels turn it into a replica (writes made
                # meanwhile are lost with its data: a miss later). Then the proxy's next write there is refused,
                # and its connection goes.
                await asyncio.to_thread(wait_for, lambda: demoted(topology), FAILOVER_LIMIT, "the old primary demoted")
            # Caching resumed on the new primary: an annotation nobody asked for before is fetched, then hit, and
            # its keys are on the promoted replica.
            fresh = fake.add_annotation()["id"]
            statuses = await fetch_until_hit(proxy, session, fresh)
            with topology.client(topology.replica) as new_primary:
                fresh_is_cached_there = bool(new_primary.exists(KeyScheme(PREFIX).pointer(fresh)))
                role = new_primary.info("replication")["role"]

    report(
        record_property,
        f"sentinel failover ({how})",
        {
            **{phase: str(stats) for phase, stats in load.stats.items()},
            "replica promoted, seconds after the failover began": f"{promoted_after:.1f}",
            "Label Studio requests until the promotion": str(upstream_during),
            "first hit, seconds after the promotion": f"{first_hit:.1f}",
        },
    )
    for phase, stats in load.stats.items():
        assert stats.errors == 0, f"{phase}: {stats}: {stats.examples}"
    if how == "killed":
        assert upstream_during > 0  # the cache failed open: Label Studio answered while there was no primary
    assert load.stats["after: hits resumed"].hits > 0
    assert statuses[0].startswith(FETCHED)
    assert statuses[-1] == HIT
    assert role == "master"
    assert fresh_is_cached_there


# --- Resharding ---------------------------------------------------------------------------------------------------


def slot_owner(cluster: RedisCluster, slot: int) -> tuple[RedisServer, str]:
    """The node serving ``slot`` now, and its cluster node id."""
    with Redis(port=cluster.nodes[0].port) as any_node:
        ranges = any_node.execute_command("CLUSTER SLOTS")
    for start, end, (_, port, node_id, *_), *_ in ranges:
        if start <= slot <= end:
            node = next(node for node in cluster.nodes if node.port == port)
            return node, node_id.decode() if isinstance(node_id, bytes) else node_id
    raise AssertionError(f"slot {slot} is not served")


def node_id(server: RedisServer) -> str:
    with Redis(port=server.port, decode_responses=True) as node:
        return str(node.execute_command("CLUSTER MYID"))


def move_slot(cluster: RedisCluster, slot: int, pause: float) -> RedisServer:
    """Move ``slot`` to another node the way ``redis-cli --cluster reshard`` does (IMPORTING, MIGRATING, MIGRATE,
    SETSLOT NODE), but one key at a time with ``pause`` between keys, so the load meets the half-moved slot."""
    source, source_id = slot_owner(cluster, slot)
    target = next(node for node in cluster.nodes if node is not source)
    target_id = node_id(target)
    with Redis(port=source.port) as src, Redis(port=target.port) as dst:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys)
            time.sleep(pause)  # the load meets the slot half moved; not a timing assertion
        for node in (target, source, *(n for n in cluster.nodes if n not in (source, target))):
            with Redis(port=node.port) as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    return target


def keys_in_slot(server: RedisServer, slot: int) -> int:
    with Redis(port=server.port) as node:
        return int(node.execute_command("CLUSTER COUNTKEYSINSLOT", slot))


async def test_cluster_slots_moved_under_load_requests_keep_succeeding_and_the_cache_follows(
    aiohttp_server: ServerFactory, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    fake, upstream, bodies = await six_annotations(aiohttp_server)
    keys = KeyScheme(PREFIX)
    with running_redis_cluster() as cluster:
        with Redis(port=cluster.nodes[0].port) as node:
            slots = sorted(
                {
                    int(node.execute_command("CLUSTER KEYSLOT", keys.pointer(annotation_id)))
                    for annotation_id in range(1, 7)
                }
            )
        async with (
            aiohttp.ClientSession() as session,
            proxy_on(
                upstream,
                fake,
                tmp_path,
                cluster.url,
                "cluster",
                PROXY_HOT_TTL="0",  # every request reads Redis, so every one of them meets the moving slots
                PROXY_CACHE_TTL="1",  # and entries are written again all the time, into the moving slots too
            ) as proxy,
        ):
            load = SteadyLoad(proxy, session, bodies)
            async with load.running(workers=8):
                await load.until(lambda: load.stats["before"].hits >= 200, 30, "hits before the resharding")
                await load.enter("resharding")
                errors_before = await cache_errors(proxy, session)
                started = time.monotonic()
                availability: list[float] = []
                sampling = asyncio.create_task(sample(load, availability))
                targets = {slot: await asyncio.to_thread(move_slot, cluster, slot, 0.2) for slot in slots}
                sampling.cancel()
                moving = time.monotonic() - started
                errors_during = await cache_errors(proxy, session) - errors_before
                await load.enter("after")
                await load.until(lambda: load.stats["after"].hits >= 200, RECOVERY_LIMIT, "hits after")
            moved_keys = {slot: keys_in_slot(target, slot) for slot, target in targets.items()}

    report(
        record_property,
        "cluster resharding",
        {
            **{phase: str(stats) for phase, stats in load.stats.items()},
            "slots moved": f"{len(slots)} in {moving:.1f} s",
            "cache errors while they moved (served as misses)": f"{errors_during:.0f}",
        },
    )
    for phase, stats in load.stats.items():
        assert stats.errors == 0, f"{phase}: {stats}: {stats.examples}"
    assert load.stats["resharding"].requests > 0
    assert errors_during > 0  # the load did meet the slots half moved...
    assert set(availability) == {1.0}  # ...and the breaker never took the cache away for it
    assert all(count > 0 for count in moved_keys.values()), moved_keys  # the cache lives on the new owners


async def sample(load: SteadyLoad, into: list[float]) -> None:
    """``annotation_proxy_cache_available`` every 0.1 s until cancelled."""
    while True:
        into.append(await load.cache_available())
        await asyncio.sleep(0.1)  # sampling a gauge, not a timing assertion


async def cache_errors(proxy: ProxyProcess, session: aiohttp.ClientSession) -> float:
    metrics = await proxy.metrics(session)
    return sum(value for name, value in metrics.items() if name.startswith("annotation_proxy_cache_errors_total"))

"""Script calls made in one turn of the event loop go to a real redis-server together, and each caller gets the
answer its own call would have had alone (proxy/cache/batching.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from proxy.cache.batching import BatchedScript, batched
from proxy.cache.topology import connect
from tests.support.redis_servers import RedisServer, running_redis

# Counts its calls in KEYS[1] and answers ARGV[1] with that count: each call's own answer, and a trace in Redis of
# every call that ran.
ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1] .. ':' .. redis.call('GET', KEYS[1])"
# Fails on a key that holds no number, as a script meeting a wrong type in Redis does.
INCREMENT = "return redis.call('INCR', KEYS[1])"
CONNECTIONS = 8


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with running_redis() as redis_server:  # its own: one test stops it
        yield redis_server


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    redis, close = connect(server.url, "standalone", timeout=2.0, max_connections=CONNECTIONS)
    assert isinstance(redis, Redis)
    yield redis
    await close()


async def connections(server: RedisServer) -> int:
    """The clients connected to ``server``, besides the one asking."""
    async with Redis.from_url(server.url) as admin:
        listed: list[Any] = await admin.client_list()
    return len(listed) - 1


async def test_a_burst_of_calls_shares_one_connection(client: Redis, server: RedisServer) -> None:
    echo = batched(client, client.register_script(ECHO))
    answers = await asyncio.gather(*(echo(keys=["calls"], args=[f"call{n}"]) for n in range(16)))
    assert [answer.decode() for answer in answers] == [f"call{n}:{n + 1}" for n in range(16)]  # in order, each its own
    assert await connections(server) == 1  # one call at a time would have opened 16


async def test_calls_from_tasks_woken_together_share_a_batch(client: Redis, server: RedisServer) -> None:
    echo = batched(client, client.register_script(ECHO))
    start = asyncio.Event()

    async def caller(n: int) -> bytes:
        await start.wait()  # all woken in one turn of the loop, as requests arriving together are
        answer: bytes = await echo(keys=["calls"], args=[f"task{n}"])
        return answer

    callers = [asyncio.create_task(caller(n)) for n in range(10)]
    await asyncio.sleep(0)  # each caller waits on the event
    start.set()
    answers = sorted((await asyncio.gather(*callers)), key=lambda answer: int(answer.split(b":")[1]))
    assert len(set(answers)) == 10
    assert await connections(server) == 1


async def test_an_error_answers_only_the_call_that_caused_it(client: Redis) -> None:
    await client.set("words", "not a number")
    increment = batched(client, client.register_script(INCREMENT))
    answers = await asyncio.gather(
        increment(keys=["a"], args=[]),
        increment(keys=["words"], args=[]),
        increment(keys=["a"], args=[]),
        return_exceptions=True,
    )
    assert answers[0] == 1
    assert isinstance(answers[1], ResponseError)
    assert "not an integer" in str(answers[1])
    assert answers[2] == 2


async def test_a_script_flushed_from_redis_is_loaded_again_for_each_call_of_a_batch(client: Redis) -> None:
    echo = batched(client, client.register_script(ECHO))
    await echo(keys=["calls"], args=["first"])  # loaded
    await client.script_flush()  # as after a restart without persistence or a failover
    answers = await asyncio.gather(*(echo(keys=["calls"], args=[f"call{n}"]) for n in range(5)))
    assert sorted(answer.decode() for answer in answers) == sorted(f"call{n}:{n + 2}" for n in range(5))


async def test_a_caller_that_left_before_its_batch_went_out_sends_nothing(client: Redis) -> None:
    echo = batched(client, client.register_script(ECHO))
    kept = echo(keys=["calls"], args=["kept"])
    left = echo(keys=["calls"], args=["left"])
    left.cancel()  # its request went away: a claim it would have made must not be granted to no one
    assert await kept == b"kept:1"
    assert await client.get("calls") == b"1"


async def test_no_more_calls_go_out_at_once_than_the_limit(client: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    execute = Pipeline.execute

    async def recorded(pipeline: Pipeline, raise_on_error: bool = True) -> list[Any]:
        sizes.append(len(pipeline.command_stack))
        return await execute(pipeline, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", recorded)
    echo = BatchedScript(client, client.register_script(ECHO), limit=3)
    answers = await asyncio.gather(*(echo(keys=["calls"], args=[f"call{n}"]) for n in range(7)))
    assert sorted(int(answer.split(b":")[1]) for answer in answers) == list(range(1, 8))  # every call answered
    assert sizes == [3, 3]  # and the seventh alone, as a plain call: never more than three on the wire


async def test_a_broken_connection_fails_every_call_of_the_batch(client: Redis, server: RedisServer) -> None:
    echo = batched(client, client.register_script(ECHO))
    await echo(keys=["calls"], args=["first"])
    server.stop()
    answers = await asyncio.gather(*(echo(keys=["calls"], args=[f"call{n}"]) for n in range(4)), return_exceptions=True)
    assert all(isinstance(answer, RedisConnectionError) for answer in answers), answers


async def test_calls_on_the_wire_when_the_client_closes_fail_instead_of_waiting(server: RedisServer) -> None:
    redis, close = connect(server.url, "standalone", timeout=2.0, max_connections=CONNECTIONS)
    assert isinstance(redis, Redis)
    echo = batched(redis, redis.register_script(ECHO))
    await echo(keys=["calls"], args=["first"])
    calls = [echo(keys=["calls"], args=[f"call{n}"]) for n in range(4)]
    await asyncio.sleep(0)  # the batch starts and sends them
    await close()  # as the store closes at shutdown
    async with asyncio.timeout(10):  # a guard against hanging, not a measurement
        answers = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(answer, RedisConnectionError) for answer in answers), answers


async def test_a_cluster_client_s_calls_are_not_batched(redis_cluster: str) -> None:
    cluster, close = connect(redis_cluster, "cluster", timeout=2.0, max_connections=CONNECTIONS)
    try:
        script = cluster.register_script(ECHO)
        assert batched(cluster, script) is script  # its pipelines split by slot and node: plain calls
    finally:
        await close()

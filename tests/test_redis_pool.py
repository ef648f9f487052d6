"""The standalone and Sentinel modes' connection pool (proxy.cache.topology.WaitingConnectionPool), on a real Redis:
at its bound a command waits for a connection to come back, up to the timeout, then fails as a connection error."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.cache.topology import WaitingConnectionPool
from tests.support.ports import free_port
from tests.support.redis_servers import running_redis


async def test_at_its_bound_a_command_waits_for_a_connection_to_come_back(redis_url: str) -> None:
    pool = WaitingConnectionPool.from_url(redis_url, max_connections=2, timeout=30.0)
    client = Redis(connection_pool=pool)
    try:
        taken = [await pool.get_connection(), await pool.get_connection()]
        waiting = asyncio.create_task(client.ping())
        for _ in range(20):  # turns of the loop: a free connection would have answered by now
            await asyncio.sleep(0)
        assert not waiting.done()
        await pool.release(taken.pop())
        assert await asyncio.wait_for(waiting, 10) is True
        await pool.release(taken.pop())
        assert all(await asyncio.gather(*(client.ping() for _ in range(10))))  # ten commands, two connections
    finally:
        await client.aclose()
        await pool.disconnect()


async def test_a_command_that_waits_past_the_timeout_fails_and_gives_nothing_away(redis_url: str) -> None:
    pool = WaitingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.05)
    client = Redis(connection_pool=pool)
    try:
        taken = await pool.get_connection()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.ping()
        await pool.release(taken)
        assert await client.ping() is True  # the bound is whole again: the timed-out wait took no connection
        assert await client.ping() is True
    finally:
        await client.aclose()
        await pool.disconnect()


async def test_connections_that_failed_to_connect_leave_the_bound_whole() -> None:
    """Redis down: every command fails to connect, and redis-py gives each failed connection back itself. Once it
    is up, the bound is what it was: at two connections taken, a third command waits instead of failing."""
    port = free_port()
    pool = WaitingConnectionPool.from_url(f"redis://127.0.0.1:{port}/0", max_connections=2, timeout=30.0)
    client = Redis(connection_pool=pool)
    try:
        for _ in range(5):
            with pytest.raises(RedisConnectionError):
                await client.ping()
        with running_redis(port=port):
            taken = [await pool.get_connection(), await pool.get_connection()]
            waiting = asyncio.create_task(client.ping())
            for _ in range(20):
                await asyncio.sleep(0)
            assert not waiting.done()  # not "Too many connections" at once: the bound held
            await pool.release(taken.pop())
            assert await asyncio.wait_for(waiting, 10) is True
            await pool.release(taken.pop())
    finally:
        await client.aclose()
        await pool.disconnect()

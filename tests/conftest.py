"""The suite's fixtures: private Redis servers, a clock moved by hand, the fake Label Studio, and ``make_proxy``.
What tests import lives in tests/support (tests/test_layout.py keeps it so)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from redis import Redis

from proxy.app import create_app
from proxy.keys import READINESS
from proxy.settings import Settings
from tests.fakes.label_studio import FakeLabelStudio
from tests.support.clock import Clock
from tests.support.proxies import CLIENT_KEY, ClientFactory, Proxy, ProxyFactory, ProxyTestServer, ServerFactory
from tests.support.redis_servers import (
    RedisServer,
    SentinelTopology,
    running_redis,
    running_redis_cluster,
    running_redis_sentinel,
)
from tests.support.waiting import wait_until

pytest_plugins = ["tests.support.termination"]  # SIGTERM tears the fixtures down, as Ctrl-C does


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of the test session's own, on a free port (never the shared 6379)."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """A 3-primary Redis Cluster of the session's own, on free ports: the URL of one node."""
    with running_redis_cluster() as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelTopology]:
    """A primary, its replica and 3 sentinels of the session's own, on free ports. Tests that fail it over start
    their own (``running_redis_sentinel``)."""
    # Slow to call the primary down, so that a stalled CI machine never fails over the session's topology.
    with running_redis_sentinel(down_after_ms=30_000) as topology:
        yield topology


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private Redis, emptied before the test. (Synchronous, so async fixtures can request it.)"""
    with Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def steady() -> Clock:
    """The proxy's monotonic clock (circuit breakers, readiness reuse), moved by hand."""
    return Clock(1_000.0)


@pytest.fixture
def fake_ls(clock: Clock) -> FakeLabelStudio:
    return FakeLabelStudio(clock=clock)


@pytest.fixture
async def upstream(aiohttp_server: ServerFactory, fake_ls: FakeLabelStudio) -> TestServer:
    """The fake Label Studio, listening on a free port."""
    return await aiohttp_server(fake_ls.app())


@pytest.fixture
def make_proxy(
    aiohttp_client: ClientFactory, upstream: TestServer, fake_ls: FakeLabelStudio, clock: Clock, steady: Clock
) -> ProxyFactory:
    """Start a proxy in front of the fake. Keyword arguments are Settings fields that replace the defaults."""

    async def start(**overrides: Any) -> Proxy:
        fields: dict[str, Any] = {
            "label_studio_url": str(upstream.make_url("/")),
            "label_studio_api_key": fake_ls.legacy_token,
            "proxy_client_keys": (CLIENT_KEY,),
            "redis_url": None,  # explicit, so a REDIS_URL in the environment never leaks into a test
        }
        fields.update(overrides)
        settings = Settings(**fields)
        registry = CollectorRegistry()
        app = create_app(settings, registry=registry, clock=clock, monotonic=steady)
        client = await aiohttp_client(ProxyTestServer(app))
        # The first dependency check runs at start-up (proxy/readiness.py); tests begin once it is done.
        await wait_until(lambda: app[READINESS].report().checks["label_studio"]["status"] != "pending")
        return Proxy(client, registry, fake_ls, settings, upstream)

    return start

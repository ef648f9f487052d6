"""What ops rely on, with the proxy as a real process: it stays in service through a Label Studio outage, and its
operations listener serves metrics and probes, and nothing else, where Prometheus and the kubelet reach it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.fakes.label_studio import FakeLabelStudio
from tests.support.cache_status import status_of
from tests.support.metrics_text import parse_metrics
from tests.support.ports import free_port
from tests.support.processes import proxy_process, serving
from tests.support.prometheus import running_prometheus
from tests.support.proxies import CLIENT_KEY

CHECK_INTERVAL = 0.05
# The kubelet probes every 5 s and gave up after 12 failures (60 s); two minutes of probes at that pace is 24
# probes, each of which sees a fresh check. Here each probe comes one check interval after the last, 5 per
# "probe period": 120 probes, 120 checks, time compressed by the short interval.
PROBES = 120
STALE_IF_ERROR = "annotation-proxy; hit; detail=stale-if-error"
AUTH = {"Authorization": f"Token {CLIENT_KEY}"}


async def readiness(session: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, object]]:
    async with session.get(f"{base}/readyz") as response:
        return response.status, json.loads(await response.read())


async def gauge(session: aiohttp.ClientSession, base: str, dependency: str) -> float | None:
    async with session.get(f"{base}/metrics") as response:
        return parse_metrics(await response.text()).get(f'annotation_proxy_dependency_up{{dependency="{dependency}"}}')


async def until(condition: object, what: str, limit: float = 30.0) -> None:
    """Poll the async ``condition()`` until it is true (a bounded wait for a condition, not a timing assert)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {limit:g} s")
        await asyncio.sleep(CHECK_INTERVAL)


async def test_a_label_studio_outage_keeps_the_replica_in_service_on_its_cached_copies(
    upstream: TestServer, fake_ls: FakeLabelStudio, redis_url: str, tmp_path: Path
) -> None:
    warm = [fake_ls.add_annotation()["id"] for _ in range(3)]
    port = upstream.port
    settings = {
        "REDIS_URL": redis_url,
        "PROXY_CHECK_INTERVAL": str(CHECK_INTERVAL),
        "PROXY_CACHE_TTL": "0.2",  # soon stale, so that Label Studio is asked and stale-if-error answers
        "PROXY_STALE_TTL": "0",
        "PROXY_HOT_TTL": "0",
        "PROXY_UPSTREAM_TIMEOUT": "1",
    }
    async with (
        proxy_process(upstream.make_url("/"), fake_ls.legacy_token, tmp_path / "proxy.log", **settings) as proxy,
        aiohttp.ClientSession() as session,
    ):
        for annotation_id in warm:
            async with session.get(f"{proxy.base}/api/annotations/{annotation_id}/", headers=AUTH) as response:
                assert response.status == 200
        assert await readiness(session, proxy.base) == (
            200,
            {
                "status": "ready",
                "checks": {"cache": {"status": "ok", "backend": "redis"}, "label_studio": {"status": "ok"}},
            },
        )
        assert await gauge(session, proxy.base, "label_studio") == 1

        await upstream.close()  # Label Studio is gone: connections are refused

        async def served_from_cache() -> bool:
            async with session.get(f"{proxy.base}/api/annotations/{warm[0]}/", headers=AUTH) as response:
                return status_of(response.headers) == STALE_IF_ERROR

        await until(served_from_cache, "a warm id answered from the cache after its TTL")
        for probe in range(PROBES):
            status, body = await readiness(session, proxy.base)
            assert (status, body["status"]) == (200, "degraded"), probe
            assert body["checks"]["label_studio"] == {  # type: ignore[index]
                "status": "failing",
                "error": "Label Studio could not be reached.",
            }
            annotation_id = warm[probe % len(warm)]
            async with session.get(f"{proxy.base}/api/annotations/{annotation_id}/", headers=AUTH) as response:
                assert response.status == 200, probe
                assert status_of(response.headers) == STALE_IF_ERROR, probe
                assert json.loads(await response.read())["id"] == annotation_id
            if probe % 10 == 0:
                assert await gauge(session, proxy.base, "label_studio") == 0
            await asyncio.sleep(CHECK_INTERVAL)  # pacing the probes, as a kubelet does; nothing is timed
        metrics = parse_metrics(await (await session.get(f"{proxy.base}/metrics")).text())
        assert metrics['annotation_proxy_cache_requests_total{result="stale_if_error"}'] >= PROBES
        assert metrics['annotation_proxy_cache_requests_total{result="stale"}'] == 0

        async with serving(fake_ls.app(), port):  # Label Studio is back where it was

            async def label_studio_up() -> bool:
                return await gauge(session, proxy.base, "label_studio") == 1

            await until(label_studio_up, "the dependency gauge back at 1")
            status, body = await readiness(session, proxy.base)
            assert (status, body["status"]) == (200, "ready")


async def test_the_operations_listener_serves_metrics_and_probes_only_and_prometheus_scrapes_it(
    upstream: TestServer, fake_ls: FakeLabelStudio, tmp_path: Path
) -> None:
    fake_ls.add_annotation()
    ops_port = free_port()
    ops = f"http://127.0.0.2:{ops_port}"
    settings = {"PROXY_HOST": "127.0.0.1", "PROXY_METRICS_HOST": "127.0.0.2", "PROXY_METRICS_PORT": str(ops_port)}
    async with (
        proxy_process(upstream.make_url("/"), fake_ls.legacy_token, tmp_path / "proxy.log", **settings) as proxy,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{ops}/metrics") as response:
            assert response.status == 200
            assert "annotation_proxy_dependency_up" in await response.text()
        async with session.get(f"{ops}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        assert (await readiness(session, ops))[0] == 200
        for path in ("/api/annotations/1/", "/api/annotations/1", "/openapi.json", "/cache/annotations/1"):
            for method in ("GET", "HEAD", "DELETE"):
                async with session.request(method, f"{ops}{path}", headers=AUTH) as response:
                    assert response.status in (404, 405), (method, path)
                    assert "Cache-Status" not in response.headers
        assert fake_ls.annotation_gets() == []  # nothing reached Label Studio through it
        # The annotation path is on the main listener only, which keeps its probes but not /metrics: the counters
        # moved by a scoped key's request would tell it whether an id of another project exists.
        async with session.get(f"{proxy.base}/api/annotations/1/", headers=AUTH) as response:
            assert response.status == 200
        async with session.get(f"{proxy.base}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{proxy.base}/metrics") as response:
            assert response.status == 404
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.2:{proxy.base.rsplit(':', 1)[1]}/healthz")

        async with running_prometheus(tmp_path, f"127.0.0.2:{ops_port}") as prometheus:

            async def scraped() -> list[object] | None:
                result = await prometheus.query(session, 'annotation_proxy_dependency_up{dependency="label_studio"}')
                return result or None

            (sample,) = await prometheus.wait_for("Prometheus scraping the operations listener", scraped)
            assert sample["metric"]["instance"] == f"127.0.0.2:{ops_port}"  # type: ignore[index]
            assert sample["value"][1] == "1"  # type: ignore[index]

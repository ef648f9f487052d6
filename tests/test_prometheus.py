"""A real Prometheus (Debian's `prometheus` package) scrapes a running proxy, with the recording and alert rules of
deploy/prometheus loaded, and answers the dashboard's own hit-ratio query with the ratio the test produced.

Everything listens on 127.0.0.1. Prometheus scrapes every second and evaluates the rules every second; the test
only waits for conditions (bounded), it never asserts on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.metrics import CACHE_RESULTS
from tests.support.cache_status import status_of
from tests.support.deploy_files import dashboard_hit_ratio_expr, load_dashboard, substitute_grafana_variables
from tests.support.prometheus import JOB, running_prometheus
from tests.support.proxies import Proxy, ProxyFactory

HITS = 9
MISSES = 3


async def serve(proxy: Proxy, hits: int, misses: int) -> None:
    """Exactly ``misses`` misses (one per new annotation) and ``hits`` hits, checked by Cache-Status."""
    ids = [proxy.fake.add_annotation()["id"] for _ in range(misses)]
    for annotation_id in ids:
        response = await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())
        assert response.status == 200
        assert status_of(response.headers).startswith("annotation-proxy; fwd=miss")
    for n in range(hits):
        response = await proxy.client.get(f"/api/annotations/{ids[n % misses]}/", headers=proxy.auth())
        assert response.status == 200
        assert status_of(response.headers) == "annotation-proxy; hit"


async def test_prometheus_answers_the_dashboard_hit_ratio_with_the_ratio_served(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy()
    target = f"127.0.0.1:{proxy.client.port}"
    expr = substitute_grafana_variables(dashboard_hit_ratio_expr(load_dashboard()), JOB)

    async with running_prometheus(tmp_path, target) as prometheus, aiohttp.ClientSession() as session:

        async def counters() -> dict[str, float] | None:
            result = await prometheus.query(session, f'annotation_proxy_cache_requests_total{{job="{JOB}"}}')
            values = {sample["metric"]["result"]: float(sample["value"][1]) for sample in result}
            return values if {"hit", "miss"} <= values.keys() else None

        # Prometheus has scraped the proxy before any request: rate() then starts from zero for every result.
        before = await prometheus.wait_for("a first scrape of the proxy", counters)
        assert before == dict.fromkeys(CACHE_RESULTS, 0.0)

        await serve(proxy, HITS, MISSES)
        assert proxy.metric("cache_requests_total", result="hit") == HITS
        assert proxy.metric("cache_requests_total", result="miss") == MISSES

        async def scraped_all() -> dict[str, float] | None:
            values = await counters()
            return values if values and values["hit"] == HITS and values["miss"] == MISSES else None

        await prometheus.wait_for("a scrape with every request", scraped_all)

        expected = HITS / (HITS + MISSES)

        async def hit_ratio() -> float | None:
            result = await prometheus.query(session, expr)
            if len(result) != 1:
                return None
            value = float(result[0]["value"][1])
            # Until the rule is evaluated after the last scrape, it may still hold an earlier ratio.
            return value if value == pytest.approx(expected, rel=1e-9) else None

        ratio = await prometheus.wait_for(f"{expr} == {expected}", hit_ratio)
        assert ratio == pytest.approx(expected, rel=1e-9)
        (sample,) = await prometheus.query(session, expr)
        assert sample["metric"]["job"] == JOB

        async def rules_healthy() -> list[dict[str, Any]] | None:
            async with session.get(f"{prometheus.url}/api/v1/rules") as response:
                groups = (await response.json())["data"]["groups"]
            evaluated = [rule for group in groups for rule in group["rules"]]
            return evaluated if all(rule["health"] == "ok" for rule in evaluated) else None

        # Every rule loaded and evaluates without error (no many-to-many matches, no bad label joins).
        evaluated = await prometheus.wait_for("every rule evaluated without error", rules_healthy)
        assert {rule["type"] for rule in evaluated} == {"recording", "alerting"}

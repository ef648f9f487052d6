"""What ops see: health, readiness, metrics and log lines."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from proxy.keys import READINESS
from proxy.logs import JsonFormatter
from proxy.metrics import Metrics
from proxy.readiness import Readiness
from tests.support.ports import free_port
from tests.support.processes import serving
from tests.support.proxies import Proxy, ProxyFactory
from tests.support.waiting import wait_until


async def test_healthz_is_cheap_and_always_ok(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(label_studio_url=f"http://127.0.0.1:{free_port()}/")
    response = await proxy.client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    assert proxy.fake.requests == []


async def test_ready_when_redis_answers_and_label_studio_accepts_the_credentials(
    make_proxy: ProxyFactory, redis_url: str
) -> None:
    proxy = await make_proxy(redis_url=redis_url)
    response = await proxy.client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ready",
        "checks": {"cache": {"status": "ok", "backend": "redis"}, "label_studio": {"status": "ok"}},
    }
    (check,) = proxy.fake.checks
    assert check.path == "/api/annotations/0/"
    assert proxy.metric("dependency_up", dependency="label_studio") == 1
    assert proxy.metric("dependency_up", dependency="redis") == 1
    assert proxy.metric("label_studio_credentials_refused") == 0


async def test_still_ready_but_degraded_when_label_studio_rejects_the_credentials(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(label_studio_api_key="e" * 40)
    response = await proxy.client.get("/readyz")
    assert response.status == 200  # the cached annotations can still be served
    body = await response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["cache"] == {"status": "ok", "backend": "memory"}
    assert body["checks"]["label_studio"]["status"] == "failing"
    assert "LABEL_STUDIO_API_KEY" in body["checks"]["label_studio"]["error"]
    assert "e" * 40 not in await response.text()
    assert proxy.metric("dependency_up", dependency="label_studio") == 0
    assert proxy.metric("label_studio_credentials_refused") == 1


async def test_still_ready_but_degraded_when_label_studio_is_unreachable(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(label_studio_url=f"http://127.0.0.1:{free_port()}/")
    response = await proxy.client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["label_studio"] == {"status": "failing", "error": "Label Studio could not be reached."}
    assert proxy.metric("dependency_up", dependency="label_studio") == 0
    assert proxy.metric("label_studio_credentials_refused") == 0
    # The check is not annotation traffic: it neither opens the breaker nor shows in the upstream counters.
    assert proxy.metric("upstream_requests_total", outcome="connection_error") == 0
    assert proxy.metric("upstream_circuit_state", state="closed") == 1


async def test_degraded_when_the_url_does_not_lead_to_label_studios_api(
    make_proxy: ProxyFactory, upstream: TestServer
) -> None:
    proxy = await make_proxy(label_studio_url=str(upstream.make_url("/wrong-prefix/")))
    response = await proxy.client.get("/readyz")
    assert response.status == 200
    assert "LABEL_STUDIO_URL" in (await response.json())["checks"]["label_studio"]["error"]


async def test_readiness_probes_cost_label_studio_nothing(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    responses = await asyncio.gather(*(proxy.client.get("/readyz") for _ in range(20)))
    assert {r.status for r in responses} == {200}
    assert len(proxy.fake.checks) == 1  # the start-up check; the probes read its result
    assert proxy.fake.requests == []


async def test_the_checks_run_in_the_background_and_follow_label_studio(
    make_proxy: ProxyFactory, upstream: TestServer
) -> None:
    proxy = await make_proxy(proxy_check_interval=0.05)
    await wait_until(lambda: len(proxy.fake.checks) >= 3)  # nobody probed: the checks ran by themselves
    port = upstream.port
    await upstream.close()
    await wait_until(lambda: proxy.metric("dependency_up", dependency="label_studio") == 0)
    assert (await (await proxy.client.get("/readyz")).json())["status"] == "degraded"
    async with serving(proxy.fake.app(), port):
        await wait_until(lambda: proxy.metric("dependency_up", dependency="label_studio") == 1)
        response = await proxy.client.get("/readyz")
        assert (response.status, (await response.json())["status"]) == (200, "ready")


async def test_degraded_but_ready_when_redis_is_down(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(redis_url=f"redis://127.0.0.1:{free_port()}/0", proxy_redis_timeout=0.2)
    response = await proxy.client.get("/readyz")
    assert response.status == 200  # Label Studio answers, so the proxy does: a dead Redis must not drain it
    body = await response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["cache"]["status"] == "failing"
    assert body["checks"]["cache"]["backend"] == "redis"
    assert body["checks"]["label_studio"] == {"status": "ok"}
    assert proxy.metric("cache_errors_total", operation="ping") == 1
    assert proxy.metric("dependency_up", dependency="redis") == 0
    assert proxy.metric("dependency_up", dependency="label_studio") == 1


async def test_not_ready_while_starting_and_while_shutting_down(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    readiness = proxy.client.app[READINESS]
    fresh = Readiness(Metrics.create(CollectorRegistry(), version="test"), backend="memory", interval=1.0)
    assert (fresh.report().status, fresh.report().ready) == ("starting", False)
    await proxy.client.app.shutdown()  # what SIGTERM runs first
    response = await proxy.client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["status"] == "shutting down"
    assert readiness.report().ready is False


async def served(proxy: Proxy) -> None:
    proxy.fake.add_annotation()
    await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    await proxy.client.get("/api/annotations/9/", headers=proxy.auth())
    await proxy.client.get("/nowhere")


async def test_metrics_endpoint_speaks_prometheus_text(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    await served(proxy)
    response = await proxy.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    for name in (
        "annotation_proxy_cache_requests",
        "annotation_proxy_upstream_requests",
        "annotation_proxy_upstream_request_duration_seconds",
        "annotation_proxy_http_requests",
        "annotation_proxy_http_request_duration_seconds",
        "annotation_proxy_coalesced_requests",
        "annotation_proxy_validation_failures",
        "annotation_proxy_cache_errors",
        "annotation_proxy_build_info",
        "process_resident_memory_bytes",
    ):
        assert name in families, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in families.values() for s in family.samples
    }
    assert samples[("annotation_proxy_cache_requests_total", (("result", "hit"),))] == 1
    assert samples[("annotation_proxy_cache_requests_total", (("result", "miss"),))] == 2
    assert samples[("annotation_proxy_cache_requests_total", (("result", "stale"),))] == 0
    status_404 = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[("annotation_proxy_http_requests_total", status_404)] == 1
    ok = (("method", "GET"), ("route", "annotation"), ("status", "200"))
    assert samples[("annotation_proxy_http_requests_total", ok)] == 2


async def test_no_metric_label_carries_an_annotation_id_or_a_hostile_method(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    for annotation_id in (1, 123456, 98765):
        await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())
    await proxy.client.request("PURGE", "/api/annotations/1/", headers=proxy.auth())
    text = await (await proxy.client.get("/metrics")).text()
    assert "123456" not in text
    assert "98765" not in text
    assert "PURGE" not in text
    assert 'method="OTHER"' in text


async def test_one_structured_access_line_per_request(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        await proxy.client.get("/api/annotations/1/", headers={**proxy.auth(), "X-Request-ID": "req-1"})
        await proxy.client.get("/api/annotations/1/", headers={**proxy.auth(), "X-Request-ID": "req-2"})
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "proxy.access"]
    assert len(lines) == 2
    first, second = lines
    assert first["msg"] == "request"
    assert {k: first[k] for k in ("method", "route", "status", "cache", "request_id")} == {
        "method": "GET",
        "route": "annotation",
        "status": 200,
        "cache": "miss",
        "request_id": "req-1",
    }
    assert second["cache"] == "hit"
    assert isinstance(first["duration_ms"], float)


async def test_the_access_line_logs_the_path_as_sent_and_never_the_query(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        await proxy.client.get("/api/annotations/1/?expand=completed_by&token=not-for-logs", headers=proxy.auth())
        for path in ("/api/annotations/%31/", "/no/such%20path?x=1"):  # %31: a 404, only digits are ids
            # Sent exactly as written: the test client would otherwise normalise %31.
            url = URL(f"http://{proxy.client.host}:{proxy.client.port}{path}", encoded=True)
            await proxy.client.session.get(url, headers=proxy.auth())
    paths = [r.path for r in caplog.records if r.name == "proxy.access"]  # type: ignore[attr-defined]
    assert paths == ["/api/annotations/1/", "/api/annotations/%31/", "/no/such%20path"]
    assert "not-for-logs" not in caplog.text


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/openapi.json", "/cache/annotations/1"])
async def test_a_method_a_route_does_not_take_is_405_in_label_studios_shape(
    make_proxy: ProxyFactory, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        response = await proxy.client.put(path, headers=proxy.auth())
    assert response.status == 405
    body = await response.json()
    assert (body["status_code"], body["detail"]) == (405, 'Method "PUT" not allowed.')
    assert response.headers["Allow"] == ("DELETE" if path.startswith("/cache/") else "GET, HEAD")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-ID"]
    assert proxy.metric("http_requests_total", route="unmatched", method="PUT", status="405") == 1
    [line] = [r for r in caplog.records if r.name == "proxy.access"]
    assert (line.route, line.status) == ("unmatched", 405)  # type: ignore[attr-defined]

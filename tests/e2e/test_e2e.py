"""The proxy in front of the real Label Studio 1.23.2 (tests/e2e/label_studio.py): fidelity, both kinds of
credentials, webhooks and the SDK. Label Studio's blocking calls run in threads: it delivers webhooks to the proxy,
which runs on this test's event loop."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from label_studio_sdk.client import LabelStudio as SdkClient
from label_studio_sdk.core.api_error import ApiError
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from proxy.settings import Settings
from tests.e2e.dataset import Dataset, create_dataset
from tests.e2e.label_studio import LabelStudio
from tests.support.cache_status import status_of
from tests.support.proxies import CLIENT_KEY, ClientFactory, ProxyTestServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret-0123456789"
NOT_THERE = [999_999, 2**63 - 1]


class Proxy:
    def __init__(self, client: TestClient[web.Request, web.Application], registry: CollectorRegistry) -> None:
        self.client = client
        self.registry = registry

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"annotation_proxy_{name}", labels) or 0.0

    async def get(self, path: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
        response = await self.client.get(path, headers={"Authorization": f"Token {CLIENT_KEY}", **headers})
        return response.status, await response.read(), dict(response.headers)


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
def make_proxy(aiohttp_client: ClientFactory, label_studio: LabelStudio) -> ProxyFactory:
    async def start(**overrides: Any) -> Proxy:
        fields: dict[str, Any] = {
            "label_studio_url": label_studio.url,
            "label_studio_api_key": label_studio.legacy_token,
            "proxy_client_keys": (CLIENT_KEY,),
            "redis_url": None,
        }
        clock = overrides.pop("clock", time.time)
        registry = CollectorRegistry()
        app = create_app(Settings(**(fields | overrides)), registry=registry, clock=clock)
        return Proxy(await aiohttp_client(ProxyTestServer(app)), registry)

    return start


def items(body: bytes) -> list[tuple[str, Any]]:
    """The body's fields in order, created_ago left out."""
    return [(key, value) for key, value in json.loads(body).items() if key != "created_ago"]


def created_ago(body: bytes) -> str:
    value: str = json.loads(body)["created_ago"]
    return value


async def label_studio_get(studio: LabelStudio, path: str) -> tuple[int, bytes]:
    status, body, _ = await asyncio.to_thread(studio.get_raw, path)
    return status, body


def paths(annotation_id: int) -> list[str]:
    base = f"/api/annotations/{annotation_id}"
    return [f"{base}/", base, f"{base}/?expand=completed_by", f"{base}?expand=completed_by"]


class TestFidelity:
    async def test_every_body_is_label_studios_with_created_ago_of_the_moment(
        self, make_proxy: ProxyFactory, label_studio: LabelStudio, dataset: Dataset
    ) -> None:
        proxy = await make_proxy()
        for annotation_id in dataset.annotations:
            for path in paths(annotation_id):
                for attempt in ("miss", "hit"):
                    _, before = await label_studio_get(label_studio, path)
                    status, body, headers = await proxy.get(path)
                    _, after = await label_studio_get(label_studio, path)
                    assert status == 200, (path, body)
                    if attempt == "hit":
                        assert "; hit" in status_of(headers), (path, headers)
                    assert items(body) == items(before) == items(after), path  # keys, order and values
                    # created_ago as Label Studio says it at that moment (a minute may turn in between).
                    assert created_ago(body) in {created_ago(before), created_ago(after)}, path
                    if created_ago(before) == created_ago(body):
                        assert body == before, path  # the very bytes

    async def test_ids_that_do_not_exist_are_label_studios_404(
        self, make_proxy: ProxyFactory, label_studio: LabelStudio
    ) -> None:
        proxy = await make_proxy()
        for annotation_id in NOT_THERE:
            for path in paths(annotation_id)[:2]:
                status, theirs = await label_studio_get(label_studio, path)
                for _ in ("miss", "remembered"):
                    proxy_status, ours, _ = await proxy.get(path)
                    assert (proxy_status, status) == (404, 404)
                    mine, real = json.loads(ours), json.loads(theirs)
                    # Same shape; `id` is random per response in Label Studio too, and `version` says who answered.
                    assert list(mine) == list(real)
                    assert (mine["status_code"], mine["detail"], mine["exc_info"]) == (404, real["detail"], None)


class TestCredentials:
    async def test_a_personal_access_token_serves_across_a_refresh(
        self, make_proxy: ProxyFactory, label_studio: LabelStudio, dataset: Dataset
    ) -> None:
        status, created = await asyncio.to_thread(label_studio.api, "POST", "/api/token/")
        if status == 409:  # one per user: revoke it and ask again
            await asyncio.to_thread(label_studio.api, "POST", "/api/token/blacklist/")
            status, created = await asyncio.to_thread(label_studio.api, "POST", "/api/token/")
        assert status == 201, created
        now = [time.time()]
        proxy = await make_proxy(label_studio_api_key=created["token"], clock=lambda: now[0], proxy_cache_ttl=1)
        first, second = dataset.annotations[:2]
        status, body, _ = await proxy.get(f"/api/annotations/{first}/")
        assert status == 200
        assert items(body) == items((await label_studio_get(label_studio, f"/api/annotations/{first}/"))[1])
        assert proxy.metric("token_refreshes_total", outcome="ok") == 1
        # The access token lives 300 s: move the proxy's clock past it; the next fetch needs a fresh one.
        now[0] += 400
        status, body, _ = await proxy.get(f"/api/annotations/{second}/")
        assert status == 200
        assert items(body) == items((await label_studio_get(label_studio, f"/api/annotations/{second}/"))[1])
        assert proxy.metric("token_refreshes_total", outcome="ok") == 2


class TestWebhooks:
    async def test_changes_in_label_studio_show_through_the_proxy_at_once(
        self, make_proxy: ProxyFactory, label_studio: LabelStudio
    ) -> None:
        proxy = await make_proxy(proxy_webhook_secret=SECRET, proxy_cache_ttl=3600)
        data = await asyncio.to_thread(create_dataset, label_studio, "annotation-proxy e2e webhooks")
        hook = {
            "project": data.project,
            "url": str(proxy.client.make_url("/webhooks/label-studio")),
            "headers": {"X-Webhook-Secret": SECRET},
            "send_payload": True,
            "send_for_all_actions": True,
        }
        status, created = await asyncio.to_thread(label_studio.api, "POST", "/api/webhooks/", hook)
        assert status == 201, created
        changed, deleted = data.annotations[0], data.annotations[1]
        for annotation_id in data.annotations:
            assert (await proxy.get(f"/api/annotations/{annotation_id}/"))[0] == 200  # all cached for an hour

        def applied(action: str) -> float:
            return proxy.metric("webhook_events_total", action=action, outcome="applied")

        status, _ = await asyncio.to_thread(
            label_studio.api, "PATCH", f"/api/annotations/{changed}/", {"lead_time": 99.5}
        )
        assert status == 200
        await wait_until(lambda: applied("ANNOTATION_UPDATED") >= 1, 20)
        status, body, _ = await proxy.get(f"/api/annotations/{changed}/")
        assert (status, json.loads(body)["lead_time"]) == (200, 99.5)

        status, _ = await asyncio.to_thread(label_studio.api, "DELETE", f"/api/annotations/{deleted}/")
        assert status == 204
        await wait_until(lambda: applied("ANNOTATIONS_DELETED") >= 1, 20)
        status, _, headers = await proxy.get(f"/api/annotations/{deleted}/")
        assert (status, status_of(headers)) == (404, "annotation-proxy; hit; detail=negative")

        task = data.tasks[3]  # its one annotation is data.annotations[3]
        status, _ = await asyncio.to_thread(label_studio.api, "DELETE", f"/api/tasks/{task}/")
        assert status == 204
        await wait_until(lambda: applied("TASKS_DELETED") >= 1, 20)
        status, _, headers = await proxy.get(f"/api/annotations/{data.annotations[3]}/")
        assert (status, status_of(headers)) == (404, "annotation-proxy; hit; detail=negative")


class TestHttpCaching:
    async def test_a_write_without_a_webhook_shows_with_no_cache(
        self, make_proxy: ProxyFactory, label_studio: LabelStudio
    ) -> None:
        proxy = await make_proxy(proxy_cache_ttl=3600)
        data = await asyncio.to_thread(create_dataset, label_studio, "annotation-proxy e2e no-cache")
        path = f"/api/annotations/{data.annotations[0]}/"
        _, before, _ = await proxy.get(path)
        status, _ = await asyncio.to_thread(label_studio.api, "PATCH", path, {"lead_time": 77.25})
        assert status == 200
        _, cached, headers = await proxy.get(path)  # no webhook: the cached version, for an hour
        assert (status_of(headers), json.loads(cached)["lead_time"]) == (
            "annotation-proxy; hit",
            json.loads(before)["lead_time"],
        )
        status, body, headers = await proxy.get(path, **{"Cache-Control": "no-cache"})
        assert (status, json.loads(body)["lead_time"]) == (200, 77.25)
        assert status_of(headers) == "annotation-proxy; fwd=request; fwd-status=200; stored"
        _, body, headers = await proxy.get(path)  # and every caller sees it from now on
        assert (status_of(headers), json.loads(body)["lead_time"]) == ("annotation-proxy; hit", 77.25)

    async def test_accept_gets_label_studios_status(
        self, make_proxy: ProxyFactory, label_studio: LabelStudio, dataset: Dataset
    ) -> None:
        proxy = await make_proxy()
        accepts = [
            "*/*", "application/json", "application/*", "APPLICATION/JSON", "application/json; q=0",
            "application/json; charset=utf-8", "text/html, application/json", "text/html, */*;q=0.1", "*/json",
            "text/html", "text/*", "text/plain", "application/xml", "application/vnd.api+json", "image/*", "",
            "garbage", "*",
        ]  # fmt: skip
        for annotation_id in (dataset.annotations[0], NOT_THERE[0]):
            path = f"/api/annotations/{annotation_id}/"
            for accept in accepts:
                theirs, _, _ = await asyncio.to_thread(label_studio.get_raw, path, None, {"Accept": accept})
                ours, _, _ = await proxy.get(path, Accept=accept)
                assert ours == theirs, (path, accept)
                anonymous = await proxy.client.get(path, headers={"Accept": accept})
                theirs, _, _ = await asyncio.to_thread(label_studio.get_raw, path, "Token wrong", {"Accept": accept})
                assert (anonymous.status == 406) is (theirs == 406), (path, accept)


class TestSdk:
    async def test_the_sdk_gets_the_same_object_and_the_same_error(
        self, make_proxy: ProxyFactory, label_studio: LabelStudio, dataset: Dataset
    ) -> None:
        proxy = await make_proxy()
        with httpx.Client() as via_proxy, httpx.Client() as via_label_studio:
            base_url = str(proxy.client.make_url("/")).rstrip("/")
            through_proxy = SdkClient(base_url=base_url, api_key=CLIENT_KEY, httpx_client=via_proxy)
            direct = SdkClient(
                base_url=label_studio.url, api_key=label_studio.legacy_token, httpx_client=via_label_studio
            )
            for annotation_id in dataset.annotations:
                ours = await asyncio.to_thread(through_proxy.annotations.get, id=annotation_id)
                theirs = await asyncio.to_thread(direct.annotations.get, id=annotation_id)
                assert ours.model_dump(exclude={"created_ago"}) == theirs.model_dump(exclude={"created_ago"})
            for client in (through_proxy, direct):
                with pytest.raises(ApiError) as raised:
                    await asyncio.to_thread(client.annotations.get, id=NOT_THERE[0])
                assert raised.value.status_code == 404


async def test_what_users_gain(
    make_proxy: ProxyFactory, label_studio: LabelStudio, dataset: Dataset, record_property: Any
) -> None:
    """Label Studio's own median latency for the endpoint, and the proxy's for hits on the same annotations."""
    proxy = await make_proxy()
    timings: dict[str, list[float]] = {"label studio": [], "proxy hits": []}
    for annotation_id in dataset.annotations:
        await proxy.get(f"/api/annotations/{annotation_id}/")  # cached
    for _ in range(20):
        for annotation_id in dataset.annotations:
            path = f"/api/annotations/{annotation_id}/"
            started = time.perf_counter()
            await label_studio_get(label_studio, path)
            timings["label studio"].append(time.perf_counter() - started)
            started = time.perf_counter()
            _, _, headers = await proxy.get(path)
            timings["proxy hits"].append(time.perf_counter() - started)
            assert "; hit" in status_of(headers)
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    summary = ", ".join(f"{name} median {ms:.2f} ms" for name, ms in medians.items())
    print(f"\nGET /api/annotations/<id>/ over {len(timings['proxy hits'])} requests: {summary}")
    record_property("median latency", summary)

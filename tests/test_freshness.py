"""Freshness end to end: webhooks, stale-while-revalidate, conditional requests, live created_ago, purge.

Time is the shared ``clock`` (the proxy's and the fake Label Studio's); no test waits for a TTL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from proxy.settings import MAX_TTL
from tests.fakes.label_studio import FakeLabelStudio
from tests.support.cache_status import status_of
from tests.support.clock import Clock
from tests.support.proxies import Proxy, ProxyFactory
from tests.support.samples import encode
from tests.support.waiting import wait_until
from tests.support.webhooks import annotation_event, annotations_created, annotations_deleted, tasks_deleted

SECRET = "webhook-secret-0123456789"
ADMIN_KEY = "admin-key-0123456789abcdef"
TTL = 300.0
STALE_TTL = 3600.0


@pytest.fixture(params=["memory", "redis"])
async def proxy(request: pytest.FixtureRequest, make_proxy: ProxyFactory) -> Proxy:
    settings: dict[str, Any] = {
        "proxy_webhook_secret": SECRET,
        "proxy_admin_keys": (ADMIN_KEY,),
        "proxy_cache_ttl": TTL,
        "proxy_stale_ttl": STALE_TTL,
    }
    if request.param == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")
    return await make_proxy(**settings)


async def get(proxy: Proxy, annotation_id: int = 1, **headers: str) -> tuple[int, Mapping[str, str], bytes]:
    """Status, headers (case-insensitive) and body of one GET with the client key."""
    response = await proxy.client.get(f"/api/annotations/{annotation_id}/", headers={**proxy.auth(), **headers})
    return response.status, response.headers, await response.read()


async def send(proxy: Proxy, event: dict[str, Any], secret: str | None = SECRET) -> int:
    headers = {"X-Webhook-Secret": secret} if secret is not None else {}
    response = await proxy.client.post("/webhooks/label-studio", json=event, headers=headers)
    return response.status


async def label_studio_body(proxy: Proxy, annotation_id: int) -> bytes:
    """What Label Studio itself answers right now."""
    url = proxy.upstream.make_url(f"/api/annotations/{annotation_id}/")
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Token {proxy.fake.legacy_token}"}
        async with session.get(url, headers=headers) as response:
            return await response.read()


def field(body: bytes, name: str) -> Any:
    return json.loads(body)[name]


class TestWebhooks:
    async def test_after_annotation_updated_the_next_get_returns_the_new_version(self, proxy: Proxy) -> None:
        fake = proxy.fake
        fake.add_annotation()
        await get(proxy)
        changed = fake.update_annotation(1, ground_truth=True)
        _, headers, body = await get(proxy)
        assert status_of(headers) == "annotation-proxy; hit"  # the change is not visible yet
        assert field(body, "ground_truth") is False

        assert await send(proxy, annotation_event("ANNOTATION_UPDATED", changed)) == 200
        status, _, body = await get(proxy)
        assert status == 200
        assert field(body, "ground_truth") is True
        assert field(body, "updated_at") == changed["updated_at"]
        assert proxy.metric("webhook_events_total", action="ANNOTATION_UPDATED", outcome="applied") == 1

    async def test_the_refetch_runs_in_the_background_and_is_shared_with_requests(self, proxy: Proxy) -> None:
        fake = proxy.fake
        fake.add_annotation()
        await get(proxy)
        changed = fake.update_annotation(1, lead_time=9.5)
        fake.hold()
        # The webhook is answered while its re-fetch waits on Label Studio.
        assert await send(proxy, annotation_event("ANNOTATION_UPDATED", changed)) == 200
        await fake.wait_for_annotation_gets(2)
        waiting = asyncio.create_task(get(proxy))
        await wait_until(lambda: proxy.metric("coalesced_requests_total") == 1)
        fake.release()
        status, headers, body = await waiting
        assert (status, field(body, "lead_time")) == (200, 9.5)
        assert "collapsed" in status_of(headers)
        assert len(fake.annotation_gets(1)) == 2
        assert proxy.metric("revalidations_total", outcome="updated") == 1

    async def test_annotation_created_drops_a_remembered_404(self, proxy: Proxy) -> None:
        status, _, _ = await get(proxy)
        assert status == 404
        record = proxy.fake.add_annotation()
        assert (await get(proxy))[0] == 404  # remembered
        assert await send(proxy, annotation_event("ANNOTATION_CREATED", record)) == 200
        assert (await get(proxy))[0] == 200

    async def test_annotations_created_lists_are_applied(self, proxy: Proxy) -> None:
        fake = proxy.fake
        records = [fake.add_annotation(), fake.add_annotation()]
        for annotation_id in (1, 2):
            await get(proxy, annotation_id)
        changed = [fake.update_annotation(r["id"], lead_time=1.0) for r in records]
        assert await send(proxy, annotations_created(changed)) == 200
        for annotation_id in (1, 2):
            assert field((await get(proxy, annotation_id))[2], "lead_time") == 1.0

    async def test_annotations_deleted_gives_404_without_asking_label_studio(self, proxy: Proxy) -> None:
        fake = proxy.fake
        fake.add_annotation()
        await get(proxy)
        fake.delete_annotation(1)
        assert await send(proxy, annotations_deleted(1)) == 200
        gets_before = len(fake.annotation_gets())
        status, headers, _ = await get(proxy)
        assert status == 404
        assert status_of(headers) == "annotation-proxy; hit; detail=negative"
        assert len(fake.annotation_gets()) == gets_before

    async def test_tasks_deleted_drops_their_annotations_without_asking_label_studio(self, proxy: Proxy) -> None:
        fake = proxy.fake
        fake.add_annotation(task=5)
        fake.add_annotation(task=5)
        fake.add_annotation(task=6)
        for annotation_id in (1, 2, 3):
            await get(proxy, annotation_id)
        for annotation_id in (1, 2):
            fake.delete_annotation(annotation_id)
        assert await send(proxy, tasks_deleted(5)) == 200
        gets_before = len(fake.annotation_gets())
        assert [(await get(proxy, i))[0] for i in (1, 2, 3)] == [404, 404, 200]
        assert len(fake.annotation_gets()) == gets_before

    async def test_a_slow_fetch_started_before_the_webhook_cannot_bring_back_the_older_version(
        self, proxy: Proxy
    ) -> None:
        fake = proxy.fake
        old = dict(fake.add_annotation())  # a copy: the fake updates its record in place
        fake.respond_raw_next(encode(old))  # this fetch leaves before the change and answers the old version
        fake.hold()
        slow = asyncio.create_task(get(proxy))
        await fake.wait_for_annotation_gets(1)
        changed = fake.update_annotation(1, ground_truth=True)
        assert await send(proxy, annotation_event("ANNOTATION_UPDATED", changed)) == 200
        fake.release()
        status, _, body = await slow
        assert field(body, "updated_at") == old["updated_at"]  # that caller asked before the change
        for _ in range(3):
            status, _, body = await get(proxy)
            assert status == 200
            assert field(body, "updated_at") == changed["updated_at"]

    async def test_a_slow_404_fetched_before_annotation_created_cannot_hide_the_annotation(
        self, proxy: Proxy, clock: Clock
    ) -> None:
        fake = proxy.fake
        fake.fail_next(status=404)  # this fetch leaves before the annotation exists
        fake.hold(count=1)
        slow = asyncio.create_task(get(proxy))
        await fake.wait_for_annotation_gets(1)
        clock.now += 1
        record = fake.add_annotation()
        assert await send(proxy, annotation_event("ANNOTATION_CREATED", record)) == 200
        await fake.wait_for_annotation_gets(2)  # the webhook's re-fetch, not held
        assert (await get(proxy))[0] == 200  # joins that re-fetch, or is served what it stored
        fake.release()
        assert (await slow)[0] == 404  # that caller asked before the annotation existed
        status, headers, _ = await get(proxy)
        assert (status, status_of(headers)) == (200, "annotation-proxy; hit")

    async def test_wrong_or_missing_secret_is_401_and_changes_nothing(self, proxy: Proxy) -> None:
        record = proxy.fake.add_annotation()
        await get(proxy)
        event = annotations_deleted(record["id"])
        assert await send(proxy, event, secret="wrong-secret-0123456789") == 401
        assert await send(proxy, event, secret=None) == 401
        assert (await get(proxy))[0] == 200
        assert proxy.metric("webhook_events_total", action="other", outcome="unauthorized") == 2

    @pytest.mark.parametrize(
        "body",
        [
            b"not json",
            b"[]",
            b'{"no_action": 1}',
            b'{"action": "ANNOTATIONS_DELETED"}',
            b'{"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "x"}]}',
            b'{"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 0}]}',
            b'{"action": "ANNOTATION_UPDATED", "annotation": {"id": 1}}',
            b'{"action": "TASKS_DELETED", "tasks": {"id": 1}}',
        ],
    )
    async def test_malformed_body_is_400_and_changes_nothing(self, proxy: Proxy, body: bytes) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        response = await proxy.client.post("/webhooks/label-studio", data=body, headers={"X-Webhook-Secret": SECRET})
        assert response.status == 400
        assert json.loads(await response.read())["detail"].startswith("Malformed webhook body")
        assert status_of((await get(proxy))[1]) == "annotation-proxy; hit"

    async def test_oversized_body_is_refused(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(proxy_webhook_secret=SECRET, proxy_webhook_max_bytes=2048)
        event = annotations_deleted(*range(1, 1000))
        response = await proxy.client.post("/webhooks/label-studio", json=event, headers={"X-Webhook-Secret": SECRET})
        assert response.status == 413

    async def test_other_actions_are_ignored_and_counted(self, proxy: Proxy) -> None:
        assert await send(proxy, {"action": "PROJECT_UPDATED", "project": {"id": 1}}) == 200
        assert proxy.metric("webhook_events_total", action="other", outcome="ignored") == 1

    async def test_no_receiver_without_a_secret(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy()
        response = await proxy.client.post("/webhooks/label-studio", json=annotations_deleted(1))
        assert response.status == 404


class TestStaleWhileRevalidate:
    async def test_stale_copy_is_served_at_once_and_refreshed_by_exactly_one_background_fetch(
        self, proxy: Proxy, clock: Clock
    ) -> None:
        fake = proxy.fake
        fake.add_annotation()
        _, _, _first = await get(proxy)
        fake.set_annotation_fields_silently(1, ground_truth=True)  # a change without a new updated_at
        clock.now += TTL + 1
        fake.hold()
        answers = await asyncio.gather(*(get(proxy) for _ in range(50)))
        assert {status_of(headers) for _, headers, _ in answers} == {"annotation-proxy; hit; detail=stale"}
        assert {field(body, "ground_truth") for _, _, body in answers} == {False}
        await fake.wait_for_annotation_gets(2)
        fake.release()
        await wait_until(lambda: proxy.metric("revalidations_total", outcome="updated") == 1)
        assert len(fake.annotation_gets(1)) == 2  # one background fetch for fifty stale answers
        assert proxy.metric("cache_requests_total", result="stale") == 50

        _, headers, body = await get(proxy)
        assert status_of(headers) == "annotation-proxy; hit"
        assert field(body, "ground_truth") is True  # same updated_at, new body: replaced
        assert len(fake.annotation_gets(1)) == 2

    async def test_an_unchanged_refresh_is_counted_unchanged(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += TTL + 1
        await get(proxy)
        await wait_until(lambda: proxy.metric("revalidations_total", outcome="unchanged") == 1)

    async def test_a_failed_refresh_keeps_serving_the_stale_copy(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += TTL + 1
        proxy.fake.fail_next(status=500)
        assert (await get(proxy))[0] == 200
        await wait_until(lambda: proxy.metric("revalidations_total", outcome="error") == 1)
        status, headers, _ = await get(proxy)
        assert (status, status_of(headers)) == (200, "annotation-proxy; hit; detail=stale")

    async def test_past_the_stale_window_the_request_waits_for_label_studio(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += TTL + STALE_TTL + 1
        _, headers, _ = await get(proxy)
        # RFC 9211: the cache held a response, but stale (fwd=miss would say it held none)
        assert status_of(headers) == "annotation-proxy; fwd=stale; fwd-status=200; stored"
        assert len(proxy.fake.annotation_gets(1)) == 2


class TestConditionalRequests:
    async def test_if_none_match_round_trip(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        _status, headers, _ = await get(proxy)
        etag = headers["ETag"]
        assert etag.startswith('W/"')
        response = await proxy.client.get("/api/annotations/1/", headers={**proxy.auth(), "If-None-Match": etag})
        assert response.status == 304
        assert await response.read() == b""
        assert response.headers["ETag"] == etag
        assert len(proxy.fake.annotation_gets(1)) == 1  # answered from the cache
        for header in (f'"x", {etag}', etag.removeprefix("W/"), "*"):
            assert (await get(proxy, **{"If-None-Match": header}))[0] == 304
        assert (await get(proxy, **{"If-None-Match": 'W/"other"'}))[0] == 200

    async def test_a_changed_body_gets_a_new_tag_and_the_old_one_a_full_answer(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        old_tag = (await get(proxy))[1]["ETag"]
        changed = proxy.fake.update_annotation(1, lead_time=7.0)
        await send(proxy, annotation_event("ANNOTATION_UPDATED", changed))
        status, headers, body = await get(proxy, **{"If-None-Match": old_tag})
        assert status == 200
        assert field(body, "lead_time") == 7.0
        assert headers["ETag"] != old_tag

    async def test_the_tag_ignores_created_ago(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        _, headers, body = await get(proxy)
        clock.now += TTL + STALE_TTL + 120  # past every window: the next GET fetches Label Studio's body again
        _, later_headers, later_body = await get(proxy)
        assert len(proxy.fake.annotation_gets(1)) == 2
        assert field(body, "created_ago") != field(later_body, "created_ago")  # Label Studio's bytes differ...
        assert headers["ETag"] == later_headers["ETag"]  # ...in created_ago only, so the version's tag holds


class TestLiveCreatedAgo:
    @pytest.mark.parametrize("elapsed", [0, 59, 60, 3_700, 90_000, 1_300_000, 40_000_000])
    async def test_cached_copy_says_what_label_studio_says_at_that_moment(
        self, make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock, elapsed: int
    ) -> None:
        proxy = await make_proxy(proxy_cache_ttl=MAX_TTL)
        fake_ls.add_annotation(result=[{"value": {"created_ago": "decoy"}}])
        await get(proxy)
        clock.now += elapsed
        _, headers, body = await get(proxy)
        assert status_of(headers) == "annotation-proxy; hit"
        # The fake renders created_ago with Django's own timesince, at the same clock.
        assert body == await label_studio_body(proxy, 1)


class TestPurge:
    async def test_admin_purge_drops_an_id(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        response = await proxy.client.delete("/cache/annotations/1", headers=proxy.auth(ADMIN_KEY))
        assert response.status == 204
        _, headers, _ = await get(proxy)
        assert status_of(headers) == "annotation-proxy; fwd=miss; fwd-status=200; stored"

    async def test_purge_needs_an_admin_key(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        for headers in ({}, proxy.auth(), proxy.auth("wrong-admin-key-0123456789")):
            response = await proxy.client.delete("/cache/annotations/1", headers=headers)
            assert response.status == 401
        assert status_of((await get(proxy))[1]) == "annotation-proxy; hit"
        assert proxy.fake.requests[-1].method == "GET"

    async def test_purge_is_off_without_admin_keys(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy()
        response = await proxy.client.delete("/cache/annotations/1", headers=proxy.auth())
        assert response.status == 403
        assert "PROXY_ADMIN_KEYS" in json.loads(await response.read())["detail"]


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_webhook_version_label_studio_never_serves_blocks_caching_only_briefly(
    make_proxy: ProxyFactory, request: pytest.FixtureRequest, steady: Clock, backend: str
) -> None:
    """A far-future updated_at (a forged webhook, a clock gone wrong) once turned caching off for the id for 24 h:
    every lookup a miss that was never stored. It holds older versions back only as long as a fetch can take."""
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    proxy = await make_proxy(
        redis_url=redis_url, proxy_webhook_secret=SECRET, proxy_upstream_timeout=0.2, proxy_hot_ttl=0
    )
    record = proxy.fake.add_annotation()
    await get(proxy)
    assert (
        await send(proxy, annotation_event("ANNOTATION_UPDATED", record | {"updated_at": "9999-01-01T00:00:00Z"}))
        == 200
    )
    assert status_of((await get(proxy))[1]) == "annotation-proxy; fwd=miss; fwd-status=200"  # not stored

    async def cached_again() -> bool:
        steady.now += 1  # the memory store's clock; Redis keeps its own time
        return status_of((await get(proxy))[1]).endswith("stored")

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await cached_again():
        assert loop.time() < deadline, "still not stored: the webhook's version blocks caching"
        await asyncio.sleep(0.1)
    assert status_of((await get(proxy))[1]) == "annotation-proxy; hit"

"""The memory budget's gate (proxy.budget.ByteBudget) and a Redis store reading large entries within it."""

from __future__ import annotations

import asyncio
import gc
import gzip
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from proxy.app import create_app
from proxy.budget import BODY_FACTOR, ByteBudget
from proxy.cache import AnnotationKey, CachedAnnotation, KeyScheme, RedisStore, Variant, redis_store
from proxy.errors import CacheBusy, UpstreamBadStatus
from proxy.keys import BODIES, READINESS, UPSTREAM
from proxy.settings import Settings
from tests.support.proxies import CLIENT_KEY, ClientFactory, ProxyTestServer, ServerFactory
from tests.support.samples import encode, sample
from tests.support.waiting import wait_until

KEY = AnnotationKey(7, Variant.PLAIN)


def settings_before(upstream: TestServer, **more: Any) -> Settings:
    """The proxy's settings in front of ``upstream``, with the in-process store and ``more``."""
    return Settings(
        label_studio_url=str(upstream.make_url("/")),  # type: ignore[arg-type]
        label_studio_api_key="0123456789abcdef0123456789abcdef01234567",  # type: ignore[arg-type]
        redis_url=None,
        **more,
    )


async def test_what_fits_is_granted_at_once_and_the_rest_waits_for_room() -> None:
    budget = ByteBudget(100)
    first = await budget.lease(60)
    waiting = asyncio.create_task(budget.lease(50))
    await asyncio.sleep(0)
    assert not waiting.done()
    small = await budget.lease(30)  # fits beside the first: not held up by the large one waiting
    assert budget.reserved == 90
    first.release()
    first.release()  # once only
    second = await waiting
    assert budget.reserved == 80
    small.release()
    second.release()
    assert budget.reserved == 0


async def test_a_reservation_larger_than_the_budget_waits_for_everything_else_then_goes() -> None:
    budget = ByteBudget(100)
    held = await budget.lease(10)
    huge = asyncio.create_task(budget.lease(1_000))
    await asyncio.sleep(0)
    assert not huge.done()
    held.release()
    lease = await huge
    assert lease.size == 100
    lease.release()


async def test_a_cancelled_wait_gives_nothing_away_and_blocks_no_one() -> None:
    budget = ByteBudget(100)
    held = await budget.lease(100)
    waiting = asyncio.create_task(budget.lease(80))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.release()
    assert budget.reserved == 0
    (await budget.lease(100)).release()


def large_entry(size: int) -> CachedAnnotation:
    body = b'{"id":7,"r":"' + b"x" * size + b'"}'
    return CachedAnnotation(annotation_id=7, version=1, stored_at=1.0, body=body, project=1, task=1)


async def test_a_large_entry_read_from_redis_holds_its_size_while_it_lives(redis_url: str) -> None:
    budget = ByteBudget(64 * 1024 * 1024)
    store = RedisStore(Redis.from_url(redis_url), KeyScheme("budget-test:"), bodies=budget)
    try:
        stored = large_entry(redis_store.LARGE_ENTRY * 4)
        assert await store.put(KEY, stored, 60.0)
        got = await store.get(KEY)
        assert got == stored
        assert isinstance(got, CachedAnnotation)
        assert budget.reserved == len(got.body)  # the decoded body, while something holds it
        del got
        gc.collect()
        assert budget.reserved == 0
    finally:
        await store.close()


async def test_a_large_read_without_room_gives_up_as_busy(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "ROOM_WAIT", 0.05)
    budget = ByteBudget(redis_store.LARGE_ENTRY * 4)
    store = RedisStore(Redis.from_url(redis_url), KeyScheme("budget-test:"), bodies=budget)
    try:
        assert await store.put(KEY, large_entry(redis_store.LARGE_ENTRY * 3), 60.0)
        held = await budget.lease(budget.capacity)
        with pytest.raises(CacheBusy):
            await store.get(KEY)
        held.release()
        await wait_until(lambda: budget.reserved == 0)
        assert isinstance(await store.get(KEY), CachedAnnotation)
    finally:
        await store.close()


async def test_the_dependency_check_gives_back_what_a_200_reserved(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    # LABEL_STUDIO_URL pointing at something that answers 200 to the check's probe: each check fails, and must
    # not keep the probe's body in the memory budget, or after a few checks every real fetch would wait for room.
    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"id": 0, "not": "label studio"})

    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", anything)
    server = await aiohttp_server(upstream)
    settings = settings_before(server)
    client = await aiohttp_client(ProxyTestServer(create_app(settings)))
    app = client.app
    await wait_until(lambda: app[READINESS].report().checks["label_studio"]["status"] != "pending")
    for _ in range(3):
        with pytest.raises(UpstreamBadStatus):
            await app[UPSTREAM].check_credentials("test")
    assert app[BODIES].reserved == 0


@pytest.mark.parametrize("coding", ["gzip", "identity"])
async def test_a_body_compressed_on_the_way_reserves_as_much_as_one_of_unknown_length(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, coding: str
) -> None:
    # The proxy asks Label Studio for plain bodies, whose Content-Length bounds what reading them costs. A gzipping
    # intermediary that compresses anyway sends a length on the wire that a body may inflate far beyond: such a
    # body is reserved for at the limit, as one whose length is not given.
    inflated = encode(sample(id=1, result=[{"text": "x" * 60_000}]))
    wire = gzip.compress(inflated) if coding == "gzip" else inflated  # "identity": no coding at all
    asked: list[str | None] = []
    go_on = asyncio.Event()

    async def annotation(request: web.Request) -> web.StreamResponse:
        asked.append(request.headers.get("Accept-Encoding"))
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Encoding": coding, "Content-Length": str(len(wire))}
        )
        await response.prepare(request)
        await response.write(wire[:64])
        await go_on.wait()  # the proxy has reserved room for the body by now
        await response.write(wire[64:])
        await response.write_eof()
        return response

    upstream = web.Application()
    upstream.router.add_get("/api/annotations/1/", annotation)
    server = await aiohttp_server(upstream)
    settings = settings_before(server, proxy_client_keys=(CLIENT_KEY,))
    client = await aiohttp_client(ProxyTestServer(create_app(settings)))
    bodies = client.app[BODIES]
    read = asyncio.create_task(client.get("/api/annotations/1/", headers={"Authorization": f"Token {CLIENT_KEY}"}))
    try:
        await wait_until(lambda: bodies.reserved > 0)
        # gzip: not 10 times the length on the wire, which the body inflates far beyond
        assert bodies.reserved == BODY_FACTOR * (settings.proxy_max_body_bytes if coding == "gzip" else len(wire))
    finally:
        go_on.set()
    response = await read
    assert response.status == 200
    assert (await response.json())["result"] == [{"text": "x" * 60_000}]  # inflated, validated, served
    assert asked == ["identity"]
    assert bodies.reserved == 0

"""An RFC 9111 client cache in front of the proxy, over real sockets: hishel 2.x (its httpx ``CacheClient``, a
private cache in SQLite) stores the first answer, then, told ``private, no-cache``, revalidates every later request
with the stored ``ETag`` and serves its copy for the proxy's 304s. A change announced by a webhook reaches it on the
next request, never the copy it holds; the same holds gzipped (a tag per coding), and under the official SDK.

hishel's clients are synchronous here (its async storage needs anysqlite), so each request runs in
``asyncio.to_thread`` while the proxy serves on the test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hishel import CacheOptions, SqliteStorage
from hishel.httpx import CacheClient
from label_studio_sdk.client import LabelStudio

from tests.support.clock import Clock
from tests.support.proxies import CLIENT_KEY, Proxy, ProxyFactory
from tests.support.samples import REGIONS
from tests.support.webhooks import annotation_event

SECRET = "webhook-secret-0123456789"
STORED = {"from_cache": False, "revalidated": False, "stored": True}
REVALIDATED = {"from_cache": True, "revalidated": True, "stored": False}  # a 304, answered with the stored copy
REPLACED = {"from_cache": False, "revalidated": True, "stored": True}  # a 200 to the conditional request


@pytest.fixture(params=["memory", "redis"])
async def proxy(request: pytest.FixtureRequest, make_proxy: ProxyFactory) -> Proxy:
    settings: dict[str, Any] = {"proxy_webhook_secret": SECRET}
    if request.param == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")
    return await make_proxy(**settings)


def caching_client(tmp_path: Path, **options: Any) -> CacheClient:
    """hishel as a browser's cache would be: private (the answers say ``private``; the requests carry Authorization)."""
    storage = SqliteStorage(database_path=tmp_path / "hishel.db")
    return CacheClient(storage=storage, rfc=CacheOptions(shared=False), **options)


@pytest.fixture
def http(proxy: Proxy, tmp_path: Path) -> Iterator[httpx.Client]:
    with caching_client(tmp_path, base_url=str(proxy.client.make_url("/")), headers=proxy.auth()) as client:
        yield client


async def read(http: httpx.Client, **headers: str) -> httpx.Response:
    return await asyncio.to_thread(http.get, "/api/annotations/1/", headers=headers)


def caching(response: httpx.Response) -> dict[str, bool]:
    return dict(response.extensions["caching"])


def answered(proxy: Proxy, status: int) -> int:
    """Requests for annotations the proxy answered with ``status``."""
    return int(proxy.metric("http_requests_total", route="annotation", method="GET", status=str(status)))


async def send(proxy: Proxy, event: dict[str, Any]) -> None:
    response = await proxy.client.post("/webhooks/label-studio", json=event, headers={"X-Webhook-Secret": SECRET})
    assert response.status == 200


async def test_hishel_revalidates_every_request_and_serves_its_copy_for_304s(
    proxy: Proxy, http: httpx.Client, clock: Clock
) -> None:
    proxy.fake.add_annotation()
    first = await read(http)
    assert (first.status_code, caching(first)) == (200, STORED)
    assert first.headers["Cache-Control"] == "private, no-cache"
    for n in range(1, 5):
        clock.now += 10
        again = await read(http)
        assert (again.status_code, caching(again)) == (200, REVALIDATED)
        assert again.content == first.content
        assert again.json() == first.json()
        assert answered(proxy, 304) == n  # each request reached the proxy, as If-None-Match with the stored tag
        assert again.headers["Age"] == str(10 * n)  # the 304's, which hishel copies onto its stored headers
    assert answered(proxy, 200) == 1
    assert len(proxy.fake.annotation_gets()) == 1


async def test_after_a_webhook_hishel_gets_the_new_version_never_its_copy(proxy: Proxy, http: httpx.Client) -> None:
    proxy.fake.add_annotation()
    await read(http)
    reads = 1
    for version in range(1, 4):
        changed = proxy.fake.update_annotation(1, lead_time=float(version))
        await send(proxy, annotation_event("ANNOTATION_UPDATED", changed))
        fresh = await read(http)
        assert (fresh.status_code, caching(fresh)) == (200, REPLACED)
        assert (fresh.json()["lead_time"], fresh.json()["updated_at"]) == (version, changed["updated_at"])
        # hishel keeps the replaced copy beside the new one (it drops all revalidated entries but the last), and
        # a 304 with a weak tag cannot pick between two: it takes two more full answers to get back to 304s.
        later = [await read(http) for _ in range(3)]
        assert all(r.content == fresh.content for r in later)
        assert caching(later[-1]) == REVALIDATED
        reads += 4
    assert answered(proxy, 200) + answered(proxy, 304) >= reads  # nothing was served without asking the proxy


async def test_gzip_is_revalidated_with_its_own_tag(proxy: Proxy, http: httpx.Client) -> None:
    proxy.fake.add_annotation(result=REGIONS)
    first = await read(http)
    assert (first.headers["Content-Encoding"], first.headers["Vary"]) == ("gzip", "Accept-Encoding")
    assert first.headers["ETag"].endswith('-gzip"')
    assert len(first.content) > 15_000  # decoded by httpx
    again = await read(http)
    assert (caching(again), again.content) == (REVALIDATED, first.content)
    assert answered(proxy, 304) == 1
    # hishel asks with the gzipped copy's tag, which is not current for the plain rendering: a 200, not that copy.
    plain = await read(http, **{"Accept-Encoding": "identity"})
    assert (caching(plain), plain.headers.get("Content-Encoding"), plain.content) == (REPLACED, None, first.content)
    assert answered(proxy, 304) == 1

    changed = proxy.fake.update_annotation(1, result=REGIONS[:30])
    await send(proxy, annotation_event("ANNOTATION_UPDATED", changed))
    fresh = await read(http)
    assert (caching(fresh), fresh.headers["Content-Encoding"]) == (REPLACED, "gzip")
    assert fresh.json()["result"] == REGIONS[:30]


async def test_the_sdk_over_hishel_reads_twice_the_second_time_by_a_304(proxy: Proxy, tmp_path: Path) -> None:
    proxy.fake.add_annotation(ground_truth=True, lead_time=12.25)

    def twice() -> tuple[Any, Any]:
        with caching_client(tmp_path, follow_redirects=True) as http:
            sdk = LabelStudio(base_url=str(proxy.client.make_url("/")), api_key=CLIENT_KEY, httpx_client=http)  # type: ignore[no-untyped-call]
            return sdk.annotations.get(id=1), sdk.annotations.get(id=1)

    first, second = await asyncio.to_thread(twice)
    assert (first.id, first.ground_truth) == (1, True)
    assert second.model_dump() == first.model_dump()
    assert (answered(proxy, 200), answered(proxy, 304)) == (1, 1)
    assert len(proxy.fake.annotation_gets()) == 1

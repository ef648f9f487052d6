"""The proxy end to end over real sockets: a real aiohttp upstream (the fake Label Studio) and real Redis."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis import Redis
from yarl import URL

from proxy import changes
from tests.fakes.label_studio import FakeLabelStudio
from tests.support.cache_status import status_of
from tests.support.ports import free_port
from tests.support.proxies import CLIENT_KEY, Proxy, ProxyFactory, ServerFactory
from tests.support.samples import SAMPLE_BODY, encode, sample
from tests.support.waiting import wait_until

ERROR_KEYS = ["id", "status_code", "version", "detail", "exc_info"]


async def upstream_body(fake: FakeLabelStudio, annotation_id: int, query: str = "") -> bytes:
    """What Label Studio itself answers, for byte comparisons."""
    async with aiohttp.ClientSession() as session:
        url = fake_url(fake).with_path(f"/api/annotations/{annotation_id}/").with_query(query)
        async with session.get(url, headers={"Authorization": f"Token {fake.legacy_token}"}) as response:
            return await response.read()


_FAKE_URLS: dict[int, Any] = {}


def fake_url(fake: FakeLabelStudio) -> Any:
    return _FAKE_URLS[id(fake)]


@pytest.fixture(autouse=True)
def _remember_fake_url(fake_ls: FakeLabelStudio, upstream: Any) -> None:
    _FAKE_URLS[id(fake_ls)] = upstream.make_url("/")


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(await response.read())
    assert list(body) == ERROR_KEYS
    assert body["status_code"] == response.status
    return body


@pytest.fixture(params=["memory", "redis"])
async def proxy(request: pytest.FixtureRequest, make_proxy: ProxyFactory) -> Proxy:
    if request.param == "redis":
        return await make_proxy(redis_url=request.getfixturevalue("redis_url"))
    return await make_proxy()


class TestCaching:
    async def test_second_get_is_a_hit_that_does_not_touch_label_studio(
        self, make_proxy: ProxyFactory, redis_url: str
    ) -> None:
        proxy = await make_proxy(redis_url=redis_url)
        proxy.fake.add_annotation()
        first = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert first.status == 200
        assert status_of(first.headers) == "annotation-proxy; fwd=miss; fwd-status=200; stored"
        hits_before = proxy.metric("cache_requests_total", result="hit")

        second = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert second.status == 200
        assert status_of(second.headers) == "annotation-proxy; hit"
        assert await second.read() == await first.read()
        assert len(proxy.fake.annotation_gets(1)) == 1
        assert proxy.metric("cache_requests_total", result="hit") == hits_before + 1

    async def test_body_is_label_studios_bytes(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation(result=[{"type": "textarea", "value": {"text": ["naïve — ✓"]}}])
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert await response.read() == await upstream_body(proxy.fake, 1)

    @pytest.mark.parametrize("backend", ["memory", "redis"])
    async def test_a_body_too_large_for_the_memo_is_label_studios_bytes_too(
        self, make_proxy: ProxyFactory, request: pytest.FixtureRequest, backend: str
    ) -> None:
        """Written as views of the cached bytes around created_ago (no copy per response): the same bytes, the
        same headers as a memoized body."""
        redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
        proxy = await make_proxy(redis_url=redis_url, proxy_render_max_bytes=64 * 1024)
        proxy.fake.add_annotation(result=[{"id": f"r{i}", "value": {"text": ["naïve ✓" * 20]}} for i in range(2000)])
        for expected in ("annotation-proxy; fwd=miss; fwd-status=200; stored", "annotation-proxy; hit"):
            response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
            body = await response.read()
            assert len(body) > 64 * 1024
            assert response.status == 200
            assert status_of(response.headers) == expected
            assert response.headers["Content-Type"] == "application/json"
            assert response.headers["Content-Length"] == str(len(body))
            assert "ETag" in response.headers
            assert "X-Request-ID" in response.headers
            assert body == await upstream_body(proxy.fake, 1)

    async def test_both_paths_are_served_not_redirected(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        for path in ("/api/annotations/1/", "/api/annotations/1", "/api/annotations/0001/"):
            response = await proxy.client.get(path, headers=proxy.auth(), allow_redirects=False)
            assert response.status == 200, path
            assert json.loads(await response.read())["id"] == 1
        assert len(proxy.fake.annotation_gets()) == 1  # one cache entry for all three spellings

    async def test_head_gets_headers_without_body(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        get = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        head = await proxy.client.head("/api/annotations/1/", headers=proxy.auth())
        assert head.status == 200
        assert await head.read() == b""
        assert head.headers["Content-Length"] == str(len(await get.read()))
        assert status_of(head.headers) == "annotation-proxy; hit"

    async def test_expand_is_forwarded_and_cached_as_its_own_variant(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        plain = await proxy.client.get("/api/annotations/1/?fields=id&x=1", headers=proxy.auth())
        expanded = await proxy.client.get("/api/annotations/1/?expand=completed_by", headers=proxy.auth())
        again = await proxy.client.get("/api/annotations/1/?expand=completed_by&fields=x", headers=proxy.auth())
        assert json.loads(await plain.read())["completed_by"] == 1
        assert json.loads(await expanded.read())["completed_by"]["email"] == "admin@example.com"
        assert await again.read() == await expanded.read()
        assert status_of(again.headers) == "annotation-proxy; hit"
        assert [g.query for g in proxy.fake.annotation_gets(1)] == [{}, {"expand": "completed_by"}]

    async def test_not_found_is_label_studios_404_and_remembered(self, proxy: Proxy) -> None:
        first = await proxy.client.get("/api/annotations/77/", headers=proxy.auth())
        second = await proxy.client.get("/api/annotations/77/", headers=proxy.auth())
        for response in (first, second):
            assert response.status == 404
            assert (await error_of(response))["detail"] == "No Annotation matches the given query."
        assert status_of(first.headers) == "annotation-proxy; fwd=miss; fwd-status=404; stored"
        assert status_of(second.headers) == "annotation-proxy; hit; detail=negative"
        assert len(proxy.fake.annotation_gets(77)) == 1
        assert proxy.metric("cache_requests_total", result="negative_hit") == 1

    @pytest.mark.parametrize(("stale_if_error_ttl", "retention_s"), [(0, 360), (86400, 86400)])
    async def test_a_remembered_404_lives_for_the_negative_ttl_and_versions_as_long_as_they_may_serve(
        self, make_proxy: ProxyFactory, redis_url: str, stale_if_error_ttl: int, retention_s: int
    ) -> None:
        # Redis expires keys by its own clock, so this reads the TTLs Redis holds instead of waiting them out.
        proxy = await make_proxy(
            redis_url=redis_url,
            proxy_negative_ttl=30,
            proxy_cache_ttl=300,
            proxy_stale_ttl=60,
            proxy_stale_if_error_ttl=stale_if_error_ttl,
        )
        proxy.fake.add_annotation()
        await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        await proxy.client.get("/api/annotations/2/", headers=proxy.auth())
        remembered = await proxy.client.get("/api/annotations/2/", headers=proxy.auth())
        assert status_of(remembered.headers) == "annotation-proxy; hit; detail=negative"
        with Redis.from_url(redis_url) as redis:
            assert 29_000 < redis.pttl("annotation-proxy:{a:2}:missing") <= 30_000
            for key in redis.keys("annotation-proxy:{a:1}:*"):
                assert (retention_s - 1) * 1000 < redis.pttl(key) <= retention_s * 1000, key


class TestCoalescing:
    async def test_a_thousand_concurrent_gets_for_a_cold_id_make_one_upstream_request(
        self, make_proxy: ProxyFactory, redis_url: str
    ) -> None:
        proxy = await make_proxy(redis_url=redis_url)
        proxy.fake.add_annotation()
        proxy.fake.hold()
        url = proxy.client.make_url("/api/annotations/1/")
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def get() -> tuple[int, bytes]:
                async with session.get(url, headers=proxy.auth()) as response:
                    return response.status, await response.read()

            requests = [asyncio.create_task(get()) for _ in range(1000)]
            await proxy.fake.wait_for_annotation_gets(1)
            # Release only once every other request is waiting on that one fetch.
            await wait_until(lambda: proxy.metric("coalesced_requests_total") == 999)
            proxy.fake.release()
            results = await asyncio.gather(*requests)
        assert len(proxy.fake.annotation_gets()) == 1
        assert {status for status, _ in results} == {200}
        assert len({body for _, body in results}) == 1

    async def test_waiters_share_a_failure(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        proxy.fake.fail_next(status=500)
        proxy.fake.hold()
        requests = [
            asyncio.create_task(proxy.client.get("/api/annotations/1/", headers=proxy.auth())) for _ in range(20)
        ]
        await proxy.fake.wait_for_annotation_gets(1)
        await wait_until(lambda: proxy.metric("coalesced_requests_total") == 19)
        proxy.fake.release()
        responses = await asyncio.gather(*requests)
        assert {r.status for r in responses} == {502}
        assert len(proxy.fake.annotation_gets()) == 1


def bad_bodies() -> list[Any]:
    def body(**changes: Any) -> bytes:
        return encode(sample(**changes))

    return [
        pytest.param(body(was_cancelled="no"), "was_cancelled", id="wrong-type"),
        pytest.param(body(last_action="exploded"), "last_action", id="unknown-last-action"),
        pytest.param(body(import_id=2**63), "import_id", id="import-id-past-int64"),
        pytest.param(body(id=2), "not the requested 1", id="id-mismatch"),
        pytest.param(b"<html><body>Server Error (500)</body></html>", "not valid JSON", id="non-json"),
        pytest.param(body(result=[{"text": "x" * 5000}]), "larger than 4096 bytes", id="too-large"),
    ]


class TestUpstreamBodies:
    @pytest.mark.parametrize(("bad", "reason"), bad_bodies())
    async def test_bad_body_is_502_never_cached_and_the_next_good_one_is(
        self, make_proxy: ProxyFactory, redis_url: str, bad: bytes, reason: str
    ) -> None:
        proxy = await make_proxy(redis_url=redis_url, proxy_max_body_bytes=4096)
        proxy.fake.add_annotation()
        proxy.fake.respond_raw_next(bad)

        rejected = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert rejected.status == 502
        detail = (await error_of(rejected))["detail"]
        assert detail.startswith("Label Studio returned an invalid annotation body")
        assert reason in detail
        assert proxy.metric("validation_failures_total") == 1

        served = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert served.status == 200
        assert status_of(served.headers) == "annotation-proxy; fwd=miss; fwd-status=200; stored"
        cached = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert status_of(cached.headers) == "annotation-proxy; hit"
        assert len(proxy.fake.annotation_gets(1)) == 2

    async def test_a_compressed_body_is_held_to_the_limit_as_it_inflates(
        self, make_proxy: ProxyFactory, redis_url: str
    ) -> None:
        """A gzipping proxy in front of Label Studio: 60 KB of JSON in a few hundred bytes on the wire."""
        proxy = await make_proxy(redis_url=redis_url, proxy_max_body_bytes=4096)
        proxy.fake.add_annotation()
        inflated = encode(sample(result=[{"text": "x" * 60_000}]))
        proxy.fake.respond_raw_next(gzip.compress(inflated), content_encoding="gzip")
        assert len(gzip.compress(inflated)) < 4096 < len(inflated)

        rejected = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert rejected.status == 502
        assert "larger than 4096 bytes" in (await error_of(rejected))["detail"]
        assert proxy.metric("upstream_requests_total", outcome="too_large") == 1


class TestUpstreamFailures:
    async def test_server_error_is_502(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        proxy.fake.fail_next(status=500)
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 502
        assert (await error_of(response))["detail"] == "Label Studio answered HTTP 500."
        assert status_of(response.headers) == "annotation-proxy; fwd=miss; fwd-status=500; detail=bad_status"
        assert proxy.metric("upstream_requests_total", outcome="bad_status") == 1
        assert proxy.metric("upstream_retries_total") == 0  # a 500 is not retried: it will not pass

    @pytest.mark.parametrize("status", [502, 503, 504])
    async def test_a_passing_gateway_error_is_retried(self, proxy: Proxy, status: int) -> None:
        proxy.fake.add_annotation()
        proxy.fake.fail_next(2, status=status)
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 200
        assert proxy.metric("upstream_retries_total") == 2
        assert len(proxy.fake.annotation_gets(1)) == 3

    async def test_a_lasting_gateway_error_is_502_after_two_retries(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        proxy.fake.fail_next(3, status=503)
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 502
        assert (await error_of(response))["detail"] == "Label Studio answered HTTP 503."
        assert len(proxy.fake.annotation_gets(1)) == 3

    async def test_timeout_is_504(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(proxy_upstream_timeout=0.2)
        proxy.fake.add_annotation()
        proxy.fake.delay_next(30)
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 504
        assert (await error_of(response))["detail"] == "Label Studio did not answer in time."
        assert proxy.metric("upstream_requests_total", outcome="timeout") == 1

    async def test_unreachable_label_studio_is_502(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(label_studio_url=f"http://127.0.0.1:{free_port()}/")
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 502
        assert (await error_of(response))["detail"] == "Label Studio could not be reached."
        assert proxy.metric("upstream_requests_total", outcome="connection_error") == 3  # two retries

    async def test_connection_closed_mid_body_is_502_and_nothing_cached(
        self, make_proxy: ProxyFactory, aiohttp_server: ServerFactory
    ) -> None:
        async def truncated(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(SAMPLE_BODY)
            await response.prepare(request)
            await response.write(SAMPLE_BODY[:100])
            assert request.transport is not None
            request.transport.close()
            return response

        app = web.Application()
        app.router.add_get("/api/annotations/1/", truncated)
        broken = await aiohttp_server(app)
        proxy = await make_proxy(label_studio_url=str(broken.make_url("/")))
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 502
        assert (await error_of(response))["detail"] == "The connection to Label Studio failed during the response."
        assert proxy.metric("upstream_requests_total", outcome="connection_error") == 3  # retried twice
        again = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert again.status != 200  # not a cache hit of a partial body

    async def test_rejected_proxy_credentials_say_misconfigured_and_reveal_nothing(
        self, make_proxy: ProxyFactory
    ) -> None:
        wrong = "f" * 40
        proxy = await make_proxy(label_studio_api_key=wrong)
        proxy.fake.add_annotation()
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 502
        raw = await response.read()
        assert "misconfigured" in (await error_of(response))["detail"]
        assert wrong.encode() not in raw
        assert proxy.fake.legacy_token.encode() not in raw

    async def test_redirect_is_not_followed(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy()
        proxy.fake.respond_raw_next(b"", status=302)
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 502
        assert "redirect" in (await error_of(response))["detail"]
        assert len(proxy.fake.requests) == 1

    async def test_a_404_that_is_not_label_studios_is_502_and_not_remembered(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        proxy.fake.respond_raw_next(b"<html><h1>404 Not Found</h1></html>", status=404, content_type="text/html")
        response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        assert response.status == 502
        assert "LABEL_STUDIO_URL" in (await error_of(response))["detail"]
        assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200

    async def test_a_hanging_redis_is_left_alone_after_a_few_timeouts(
        self, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The announcements' subscription (followed with or without the hot tier: the store is shared) tries once
        # within the test, then backs off for a minute: at most one connection of its own.
        monkeypatch.setattr(changes, "RETRY_MIN", 60.0)
        connections = 0

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            await reader.read()  # until the proxy gives up and closes
            writer.close()

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            proxy = await make_proxy(redis_url=f"redis://127.0.0.1:{port}/0", proxy_redis_timeout=0.1, proxy_hot_ttl=0)
            proxy.fake.add_annotation()
            for _ in range(10):
                response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
                assert response.status == 200
        assert 1 <= connections <= 4  # the circuit breaker opened: nine requests never waited on Redis
        assert len(proxy.fake.annotation_gets(1)) == 10

    async def test_redis_down_serves_from_label_studio(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(redis_url=f"redis://127.0.0.1:{free_port()}/0", proxy_redis_timeout=0.2)
        proxy.fake.add_annotation()
        for _ in range(2):
            response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
            assert response.status == 200
            assert status_of(response.headers) == "annotation-proxy; fwd=miss; fwd-status=200"
        assert proxy.metric("cache_errors_total", operation="get") >= 2
        assert proxy.metric("cache_errors_total", operation="put") == 2


class TestCallers:
    async def test_missing_client_key_is_401_with_challenge(self, proxy: Proxy) -> None:
        response = await proxy.client.get("/api/annotations/1/")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Token"
        assert (await error_of(response))["detail"] == "Authentication credentials were not provided."
        assert proxy.fake.requests == []

    @pytest.mark.parametrize(
        "header",
        [f"Token {CLIENT_KEY}x", f"Bearer {CLIENT_KEY}", "Token", f"Basic {CLIENT_KEY}", "Token  "],
    )
    async def test_wrong_client_key_is_401(self, proxy: Proxy, header: str) -> None:
        response = await proxy.client.get("/api/annotations/1/", headers={"Authorization": header})
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Token"
        assert proxy.fake.requests == []

    async def test_anonymous_on_loopback_without_keys(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(proxy_client_keys=())
        proxy.fake.add_annotation()
        response = await proxy.client.get("/api/annotations/1/")
        assert response.status == 200

    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
    async def test_writes_are_405_and_never_reach_label_studio(self, proxy: Proxy, method: str) -> None:
        proxy.fake.add_annotation()
        for path in ("/api/annotations/1/", "/api/annotations/1"):
            response = await proxy.client.request(method, path, headers=proxy.auth(), json={"result": []})
            assert response.status == 405
            assert response.headers["Allow"] == "GET, HEAD"
            assert (await error_of(response))["detail"] == f'Method "{method}" not allowed.'
        assert proxy.fake.requests == []

    async def test_absolute_form_request_line_is_served(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        host, port = proxy.client.host, proxy.client.port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET http://{host}:{port}/api/annotations/1/ HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Token {CLIENT_KEY}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK")

    @pytest.mark.parametrize(
        "path",
        [
            "/api/annotations/0/",
            "/api/annotations/-1/",
            "/api/annotations/abc/",
            "/api/annotations/9223372036854775808/",
            "/api/annotations/%31/",
            "/api/annotations/1%2F..%2F..%2Fusers/",
            "/api/annotations/%2e%2e/",
            "/api/annotations/..%2f..%2fprojects/",
            "/api/annotations/1;x/",
            "/api/annotations/%EF%BC%91/",
            "/api/annotations/",
            "/api/annotations/1/extra/",
            "/api/annotations/1//",
            "/api/projects/1/",
            "/api/users/",
            "/api/token/refresh/",
            "/api/annotations/1/../../users/",
            "//api/annotations/1/",
            "/",
        ],
    )
    async def test_anything_but_an_annotation_id_is_404_and_never_reaches_label_studio(
        self, proxy: Proxy, path: str
    ) -> None:
        # Sent exactly as written: the test client would otherwise normalise %31 and //.
        url = URL(f"http://{proxy.client.host}:{proxy.client.port}{path}", encoded=True)
        async with aiohttp.ClientSession() as session, session.get(url, headers=proxy.auth()) as response:
            assert response.status == 404
            await error_of(response)
        assert proxy.fake.requests == []

    async def test_caller_credentials_and_headers_never_go_upstream(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        await proxy.client.get(
            "/api/annotations/1/?token=abc",
            headers={
                **proxy.auth(),
                "Cookie": "sessionid=caller-session",
                "X-Api-Key": "caller-api-key",
                "Proxy-Authorization": "Basic Y2FsbGVy",
                "X-Forwarded-For": "10.1.2.3",
                "X-Request-ID": "trace-42",
            },
        )
        (sent,) = proxy.fake.annotation_gets(1)
        headers = {k.lower(): v for k, v in sent.headers.items()}
        assert headers["authorization"] == f"Token {proxy.fake.legacy_token}"
        assert headers["x-request-id"] == "trace-42"
        for name in ("cookie", "x-api-key", "proxy-authorization", "x-forwarded-for"):
            assert name not in headers
        assert CLIENT_KEY not in json.dumps(sent.headers)
        assert sent.query == {}

    async def test_label_studio_cookies_are_neither_returned_nor_replayed(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        proxy.fake.add_annotation()
        first = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
        await proxy.client.get("/api/annotations/2/", headers=proxy.auth())
        assert "Set-Cookie" not in first.headers
        assert all("Cookie" not in g.headers and "cookie" not in g.headers for g in proxy.fake.annotation_gets())
        assert {name.lower() for name in first.headers} <= {
            "content-type", "content-length", "cache-status", "x-request-id", "date", "server", "etag",
            "cache-control", "vary",
        }  # fmt: skip

    async def test_request_id_is_echoed_or_made(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        kept = await proxy.client.get("/api/annotations/1/", headers={**proxy.auth(), "X-Request-ID": "abc-123"})
        made = await proxy.client.get("/api/annotations/1/", headers={**proxy.auth(), "X-Request-ID": "bad id\t"})
        assert kept.headers["X-Request-ID"] == "abc-123"
        assert made.headers["X-Request-ID"] not in ("", "bad id\t")
        error = await proxy.client.get("/nope", headers={"X-Request-ID": "err-1"})
        assert error.headers["X-Request-ID"] == "err-1"

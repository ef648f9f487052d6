"""HTTP caching spoken to callers, over real sockets: request directives (RFC 9111 5.2.1), Age, Cache-Control,
Cache-Status (RFC 9211), conditional requests, gzip and content negotiation (docs/api.md, docs/freshness.md).

Time is the shared ``clock`` (the proxy's and the fake Label Studio's): ages are set, never waited for.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from proxy.keys import LIVE_BODIES
from tests.support.cache_status import status_of, ttl_of
from tests.support.clock import Clock
from tests.support.proxies import Proxy, ProxyFactory
from tests.support.samples import REGIONS
from tests.support.waiting import wait_until

TTL = 300.0
STALE_TTL = 3600.0
FETCHED = "annotation-proxy; fwd=miss; fwd-status=200; stored"
FORCED = "annotation-proxy; fwd=request; fwd-status=200; stored"
STALE_REFUSED = "annotation-proxy; fwd=stale; fwd-status=200; stored"  # RFC 9211: a stale copy, not a fresh one
HIT = "annotation-proxy; hit"
STALE = "annotation-proxy; hit; detail=stale"


@pytest.fixture(params=["memory", "redis"])
async def proxy(request: pytest.FixtureRequest, make_proxy: ProxyFactory) -> Proxy:
    settings: dict[str, Any] = {"proxy_cache_ttl": TTL, "proxy_stale_ttl": STALE_TTL}
    if request.param == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")
    return await make_proxy(**settings)


async def get(
    proxy: Proxy, annotation_id: int = 1, *headers: tuple[str, str], method: str = "GET"
) -> tuple[int, Mapping[str, str], bytes]:
    """Status, headers and raw body (not decompressed) of one request with the client key and ``headers``,
    each a separate header line."""
    lines: list[tuple[str, str]] = [*proxy.auth().items(), *headers]
    url = proxy.client.make_url(f"/api/annotations/{annotation_id}/")
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, url, headers=lines, skip_auto_headers=["Accept-Encoding"]) as response,
    ):
        return response.status, response.headers, await response.read()


def field(body: bytes, name: str) -> Any:
    return json.loads(body)[name]


def upstream_gets(proxy: Proxy) -> int:
    return len(proxy.fake.annotation_gets())


class TestReadYourWrite:
    @pytest.mark.parametrize(
        "headers",
        [
            [("Cache-Control", "no-cache")],
            [("Cache-Control", "max-age=0")],
            [("Pragma", "no-cache")],
            [("Cache-Control", "public, No-Cache")],  # names are case-insensitive; others are ignored
        ],
        ids=["no-cache", "max-age=0", "pragma", "mixed"],
    )
    async def test_a_forced_fetch_serves_and_stores_the_new_version(
        self, proxy: Proxy, headers: list[tuple[str, str]]
    ) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        proxy.fake.update_annotation(1, ground_truth=True)  # no webhook
        _, cached, body = await get(proxy)
        assert (status_of(cached), field(body, "ground_truth")) == (HIT, False)

        status, forced, body = await get(proxy, 1, *headers)
        assert (status, status_of(forced), field(body, "ground_truth")) == (200, FORCED, True)
        assert proxy.metric("forced_fetches_total") == 1
        # The fresh version replaced the cached one, for every caller.
        _, after, body = await get(proxy)
        assert (status_of(after), field(body, "ground_truth")) == (HIT, True)
        assert upstream_gets(proxy) == 2

    async def test_a_forced_fetch_that_fails_says_fwd_request(self, proxy: Proxy) -> None:
        """RFC 9211 2.2: the cache held a usable answer and the request made it ask; it said fwd=miss."""
        proxy.fake.add_annotation()
        await get(proxy)
        proxy.fake.fail_next(status=500)
        status, headers, _ = await get(proxy, 1, ("Cache-Control", "no-cache"))
        assert (status, status_of(headers)) == (502, "annotation-proxy; fwd=request; fwd-status=500; detail=bad_status")
        proxy.fake.fail_next(status=500)
        status, headers, _ = await get(proxy, 2)  # an ordinary miss that fails stays fwd=miss
        assert (status, status_of(headers)) == (502, "annotation-proxy; fwd=miss; fwd-status=500; detail=bad_status")

    async def test_pragma_is_ignored_beside_cache_control(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        _, headers, _ = await get(proxy, 1, ("Cache-Control", "max-age=60"), ("Pragma", "no-cache"))
        assert status_of(headers) == HIT

    async def test_a_forced_fetch_of_a_remembered_404_finds_a_new_annotation(self, proxy: Proxy) -> None:
        assert (await get(proxy, 1))[0] == 404
        proxy.fake.add_annotation()
        assert (await get(proxy, 1))[0] == 404  # remembered
        status, headers, _ = await get(proxy, 1, ("Cache-Control", "no-cache"))
        assert (status, status_of(headers)) == (200, FORCED)

    @pytest.mark.parametrize("store", ["memory", "redis"])
    async def test_a_hundred_concurrent_no_cache_requests_make_one_upstream_request(
        self, make_proxy: ProxyFactory, request: pytest.FixtureRequest, store: str
    ) -> None:
        # Redis given time for a hundred reads at once on a busy machine: a read that fails is a miss (fail
        # open), which would rightly fetch on its own.
        settings = (
            {"redis_url": request.getfixturevalue("redis_url"), "proxy_redis_timeout": 5} if store == "redis" else {}
        )
        proxy = await make_proxy(**settings)
        proxy.fake.add_annotation()
        await get(proxy)
        proxy.fake.update_annotation(1, ground_truth=True)
        proxy.fake.hold()
        url = proxy.client.make_url("/api/annotations/1/")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def forced() -> tuple[int, str, bytes]:
                headers = {**proxy.auth(), "Cache-Control": "no-cache"}
                async with session.get(url, headers=headers) as response:
                    return response.status, status_of(response.headers), await response.read()

            requests = [asyncio.create_task(forced()) for _ in range(100)]
            await proxy.fake.wait_for_annotation_gets(2)
            await wait_until(lambda: proxy.metric("coalesced_requests_total") == 99)
            proxy.fake.release()
            answers = await asyncio.gather(*requests)
        assert upstream_gets(proxy) == 2  # the first miss, then one forced fetch for all hundred
        assert {(status, field(body, "ground_truth")) for status, _, body in answers} == {(200, True)}
        statuses = Counter(status for _, status, _ in answers)
        assert statuses == {FORCED: 1, "annotation-proxy; fwd=request; fwd-status=200; collapsed": 99}

    async def test_client_revalidation_off_ignores_what_would_force_a_fetch(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(proxy_client_revalidation=False)
        proxy.fake.add_annotation()
        await get(proxy)
        for headers in ([("Cache-Control", "no-cache")], [("Pragma", "no-cache")], [("Cache-Control", "max-age=0")]):
            assert status_of((await get(proxy, 1, *headers))[1]) == HIT
        assert upstream_gets(proxy) == 1
        assert (await get(proxy, 2, ("Cache-Control", "only-if-cached")))[0] == 504  # still honoured
        assert upstream_gets(proxy) == 1


class TestAgeLimits:
    async def test_max_age_refuses_an_older_version(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += 100
        assert status_of((await get(proxy, 1, ("Cache-Control", "max-age=200")))[1]) == HIT
        assert status_of((await get(proxy, 1, ("Cache-Control", "max-age=50")))[1]) == FORCED

    async def test_min_fresh_refuses_a_version_about_to_go_stale(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += 100  # fresh for 200 s more
        assert status_of((await get(proxy, 1, ("Cache-Control", "min-fresh=150")))[1]) == HIT
        assert status_of((await get(proxy, 1, ("Cache-Control", "min-fresh=250")))[1]) == FORCED

    async def test_max_age_and_min_fresh_refuse_an_older_remembered_404(self, proxy: Proxy, clock: Clock) -> None:
        """A remembered 404 carries its Age (when Label Studio said it); a request that allows less must not get
        it, but was answered the 404 whatever its age, though the annotation had been created since."""
        assert (await get(proxy, 1))[0] == 404  # remembered for the default 30 s
        proxy.fake.add_annotation()
        clock.now += 25
        status, headers, _ = await get(proxy, 1, ("Cache-Control", "max-age=60"))
        assert (status, status_of(headers), headers["Age"]) == (404, "annotation-proxy; hit; detail=negative", "25")
        assert (await get(proxy, 1, ("Cache-Control", "min-fresh=10")))[0] == 200  # 25 + 10 s is past its 30 s
        assert (await get(proxy, 1))[0] == 200  # the forced fetch stored the new annotation

    async def test_max_age_refuses_a_remembered_404_older_than_it(self, proxy: Proxy, clock: Clock) -> None:
        assert (await get(proxy, 1))[0] == 404
        proxy.fake.add_annotation()
        clock.now += 25
        status, headers, _ = await get(proxy, 1, ("Cache-Control", "max-age=10"))
        assert (status, status_of(headers)) == (200, FORCED)

    async def test_max_age_is_held_against_the_age_the_answer_says(self, proxy: Proxy, clock: Clock) -> None:
        """A copy 5.5 s old says Age: 5; max-age=5 refused it, and the proxy asked Label Studio again."""
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += 5.5
        _, headers, _ = await get(proxy, 1, ("Cache-Control", "max-age=5"))
        assert (status_of(headers), headers["Age"]) == (HIT, "5")
        assert upstream_gets(proxy) == 1

    async def test_max_age_without_max_stale_gets_no_stale_answer(self, proxy: Proxy, clock: Clock) -> None:
        """RFC 9111 5.2.1.1: "unless the max-stale request directive is also present, the client does not wish to
        receive a stale response". The copy 100 s stale was served though it asked for at most a day's age."""
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += TTL + 100
        status, headers, _ = await get(proxy, 1, ("Cache-Control", "max-age=86400"))
        assert (status, status_of(headers)) == (200, STALE_REFUSED)
        assert upstream_gets(proxy) == 2

    async def test_a_comma_in_a_quoted_value_ends_no_directive(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        _, headers, _ = await get(proxy, 1, ("Cache-Control", 'ext="x, max-age=0"'))
        assert status_of(headers) == HIT  # an unknown directive, ignored; not max-age=0
        assert upstream_gets(proxy) == 1

    async def test_max_stale_narrows_the_stale_window(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += TTL + 100  # stale by 100 s: served stale by default
        assert status_of((await get(proxy, 1, ("Cache-Control", "max-stale=500")))[1]) == STALE
        await proxy.fake.wait_for_annotation_gets(2)  # the background revalidation
        clock.now += TTL + 100
        assert status_of((await get(proxy, 1, ("Cache-Control", "max-stale=10")))[1]) == STALE_REFUSED

    async def test_max_stale_widens_it_over_what_the_store_still_holds(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += TTL + STALE_TTL + 60  # expired: an ordinary request would wait for Label Studio
        proxy.fake.hold()
        status, headers, _ = await get(proxy, 1, ("Cache-Control", "max-stale"))
        assert (status, status_of(headers)) == (200, STALE)
        proxy.fake.release()

    async def test_a_copy_past_its_stale_window_is_forwarded_as_stale(self, proxy: Proxy, clock: Clock) -> None:
        """RFC 9211 fwd=stale: the cache held a response, stale. It said fwd=miss, as if nothing were held."""
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += TTL + STALE_TTL + 60
        status, headers, _ = await get(proxy)
        assert (status, status_of(headers)) == (200, STALE_REFUSED)
        assert status_of((await get(proxy, 2))[1]) == "annotation-proxy; fwd=miss; fwd-status=404; stored"

    async def test_malformed_values_count_as_zero(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        await get(proxy)
        assert status_of((await get(proxy, 1, ("Cache-Control", "max-age=soon")))[1]) == FORCED


class TestNoStoreAndOnlyIfCached:
    async def test_no_store_answers_without_storing(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        status, headers, _ = await get(proxy, 1, ("Cache-Control", "no-store"))
        assert (status, status_of(headers)) == (200, "annotation-proxy; fwd=miss; fwd-status=200")
        assert status_of((await get(proxy))[1]) == FETCHED  # nothing was kept
        assert status_of((await get(proxy, 1, ("Cache-Control", "no-store")))[1]) == HIT  # serving is fine

    async def test_no_store_does_not_remember_a_404(self, proxy: Proxy) -> None:
        assert (await get(proxy, 7, ("Cache-Control", "no-store")))[0] == 404
        status, headers, _ = await get(proxy, 7)
        assert (status, status_of(headers)) == (404, "annotation-proxy; fwd=miss; fwd-status=404; stored")

    async def test_only_if_cached_never_asks_label_studio(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        status, headers, body = await get(proxy, 1, ("Cache-Control", "only-if-cached"))
        assert (status, field(body, "detail")) == (504, "Not in the cache, and the request said only-if-cached.")
        assert headers["Cache-Control"] == "no-store"
        assert upstream_gets(proxy) == 0
        await get(proxy)
        assert status_of((await get(proxy, 1, ("Cache-Control", "only-if-cached")))[1]) == HIT
        clock.now += TTL + 1  # stale: served, and no background fetch either
        assert status_of((await get(proxy, 1, ("Cache-Control", "only-if-cached")))[1]) == STALE
        assert (await get(proxy, 1, ("Cache-Control", "only-if-cached, no-cache")))[0] == 504
        assert upstream_gets(proxy) == 1

    async def test_only_if_cached_serves_a_remembered_404(self, proxy: Proxy) -> None:
        await get(proxy, 9)
        status, headers, _ = await get(proxy, 9, ("Cache-Control", "only-if-cached"))
        assert (status, status_of(headers)) == (404, "annotation-proxy; hit; detail=negative")


class TestResponseHeaders:
    async def test_age_and_ttl_follow_the_cached_version(self, proxy: Proxy, clock: Clock) -> None:
        proxy.fake.add_annotation()
        _, fetched, _ = await get(proxy)
        assert "Age" not in fetched
        assert ttl_of(fetched) == TTL
        clock.now += 42
        _, hit, _ = await get(proxy)
        assert (hit["Age"], ttl_of(hit)) == ("42", TTL - 42)
        clock.now += TTL
        _, stale, _ = await get(proxy)
        assert (status_of(stale), stale["Age"], ttl_of(stale)) == (STALE, str(42 + int(TTL)), -42)

    async def test_a_remembered_404_has_an_age_too(self, proxy: Proxy, clock: Clock) -> None:
        assert "Age" not in (await get(proxy, 5))[1]  # fetched now
        clock.now += 7
        status, headers, _ = await get(proxy, 5)
        assert (status, status_of(headers), headers["Age"]) == (404, "annotation-proxy; hit; detail=negative", "7")

    async def test_cache_control_on_every_response(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        _, ok, _ = await get(proxy)
        assert ok["Cache-Control"] == "private, no-cache"
        _, not_modified, _ = await get(proxy, 1, ("If-None-Match", ok["ETag"]))
        assert not_modified["Cache-Control"] == "private, no-cache"
        assert (await get(proxy, 404))[1]["Cache-Control"] == "no-store"
        for path in ("/metrics", "/healthz", "/readyz", "/nowhere"):
            response = await proxy.client.get(path)
            assert response.headers["Cache-Control"] == "no-store", path
        unauthorized = await proxy.client.get("/api/annotations/1/")
        assert (unauthorized.status, unauthorized.headers["Cache-Control"]) == (401, "no-store")

    async def test_if_none_match_is_one_list_over_several_lines(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()
        _, headers, _ = await get(proxy)
        etag = headers["ETag"]
        for lines in (
            [("If-None-Match", 'W/"other"'), ("If-None-Match", etag)],
            [("If-None-Match", f'"a,b", {etag.removeprefix("W/")}')],  # a comma inside a tag; strong form
            [("If-None-Match", "*")],
        ):
            for method in ("GET", "HEAD"):
                status, answer, body = await get(proxy, 1, *lines, method=method)
                assert (status, body, answer["ETag"]) == (304, b"", etag), (lines, method)
        assert (await get(proxy, 1, ("If-None-Match", 'W/"other"'), ("If-None-Match", "junk")))[0] == 200

    async def test_if_match_holds_only_for_a_star(self, proxy: Proxy) -> None:
        """RFC 9110 13.1.1: If-Match compares strongly, and the proxy's tags are weak, so a tag never matches; it
        was ignored (a 200 whatever it named). A 404 is answered as one: preconditions count only on a 200."""
        proxy.fake.add_annotation()
        _, headers, _ = await get(proxy)
        etag = headers["ETag"]
        for method in ("GET", "HEAD"):
            for value in ('"does-not-match"', etag, etag.removeprefix("W/")):
                status, _, body = await get(proxy, 1, ("If-Match", value), method=method)
                assert status == 412, (value, method)
                if method == "GET":
                    assert json.loads(body)["detail"].startswith("Precondition failed")
            assert (await get(proxy, 1, ("If-Match", "*"), method=method))[0] == 200
            # Evaluated before If-None-Match: a * that holds, then a tag that matches: a 304.
            assert (await get(proxy, 1, ("If-Match", "*"), ("If-None-Match", etag), method=method))[0] == 304
        assert (await get(proxy, 404, ("If-Match", '"x"')))[0] == 404


class TestCompression:
    async def test_gzip_when_accepted_with_its_own_tag(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation(result=REGIONS)
        _, plain_headers, plain = await get(proxy)
        assert "Content-Encoding" not in plain_headers
        assert len(plain) > 15_000
        status, headers, body = await get(proxy, 1, ("Accept-Encoding", "gzip, deflate"))
        assert (status, headers["Content-Encoding"], headers["Vary"]) == (200, "gzip", "Accept-Encoding")
        assert gzip.decompress(body) == plain
        assert len(body) < len(plain) / 3
        assert int(headers["Content-Length"]) == len(body)
        assert headers["ETag"] != plain_headers["ETag"]  # other bytes, another tag (RFC 9110 8.8.3)
        assert plain_headers["Vary"] == "Accept-Encoding"
        # Each tag is current for its own representation only.
        revalidate = ("If-None-Match", headers["ETag"])
        assert (await get(proxy, 1, revalidate, ("Accept-Encoding", "gzip")))[0] == 304
        assert (await get(proxy, 1, revalidate))[0] == 200
        _, head, empty = await get(proxy, 1, ("Accept-Encoding", "gzip"), method="HEAD")
        assert (head["Content-Encoding"], head["Content-Length"], empty) == ("gzip", str(len(body)), b"")

    @pytest.mark.parametrize(
        ("accept_encoding", "gzipped"),
        [
            ("gzip", True),
            ("x-gzip", True),
            ("*", True),
            ("br;q=1, gzip;q=0.5", True),
            ("gzip;q=0", False),
            ("*, gzip;q=0", False),
            ("gzip;q=0.5, identity", False),
            ("identity", False),
            ("deflate, br", False),
            ("gzip;q=bad", False),
        ],
    )
    async def test_accept_encoding_with_quality_values(self, proxy: Proxy, accept_encoding: str, gzipped: bool) -> None:
        proxy.fake.add_annotation(result=REGIONS)
        _, headers, _ = await get(proxy, 1, ("Accept-Encoding", accept_encoding))
        assert ("Content-Encoding" in headers) is gzipped

    async def test_small_bodies_are_sent_as_they_are(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation()  # about 600 bytes
        _, headers, body = await get(proxy, 1, ("Accept-Encoding", "gzip"))
        assert "Content-Encoding" not in headers
        assert field(body, "id") == 1

    async def test_a_rendering_is_compressed_once(self, proxy: Proxy) -> None:
        proxy.fake.add_annotation(result=REGIONS)
        await get(proxy)
        bodies = proxy.client.app[LIVE_BODIES]
        kept = (len(bodies), bodies.size_bytes)
        first = (await get(proxy, 1, ("Accept-Encoding", "gzip")))[2]
        assert len(bodies) == kept[0] + 1  # the gzipped rendering, kept beside the plain one
        assert bodies.size_bytes < kept[1] + len(first) * 2
        for _ in range(3):
            assert (await get(proxy, 1, ("Accept-Encoding", "gzip")))[2] == first
        assert len(bodies) == kept[0] + 1

    async def test_compression_off(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(proxy_compression=False)
        proxy.fake.add_annotation(result=REGIONS)
        _, headers, _ = await get(proxy, 1, ("Accept-Encoding", "gzip"))
        assert "Content-Encoding" not in headers
        assert "Vary" not in headers

    async def test_metrics_are_compressed_when_asked(self, proxy: Proxy) -> None:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            url = proxy.client.make_url("/metrics")
            async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
                assert response.headers["Content-Encoding"] == "gzip"
                text = gzip.decompress(await response.read()).decode()
        assert "annotation_proxy_cache_requests_total" in text


class TestContentNegotiation:
    """Label Studio's answers, from the real one (tests/e2e checks the same table against it)."""

    @pytest.mark.parametrize(
        ("accept", "status"),
        [
            ("*/*", 200),
            ("application/json", 200),
            ("application/*", 200),
            ("APPLICATION/JSON", 200),
            ("application/json; q=0", 200),  # REST framework does not read quality values
            ("text/html, application/json", 200),
            ("text/html, */*;q=0.1", 200),
            ("text/html", 406),
            ("text/*", 406),
            ("application/xml", 406),
            ("application/vnd.api+json", 406),
            ("", 406),
            ("garbage", 406),
        ],
    )
    async def test_accept_answers_as_label_studio(self, proxy: Proxy, accept: str, status: int) -> None:
        proxy.fake.add_annotation()
        answer, headers, body = await get(proxy, 1, ("Accept", accept))
        assert answer == status
        if status == 406:
            assert field(body, "detail") == "Could not satisfy the request Accept header."
            assert headers["Content-Type"] == "application/json"
            assert upstream_gets(proxy) == 0

    async def test_406_comes_before_the_key_and_the_lookup(self, proxy: Proxy) -> None:
        response = await proxy.client.get("/api/annotations/12345/", headers={"Accept": "text/html"})
        assert response.status == 406
        assert "WWW-Authenticate" not in response.headers

    @pytest.mark.parametrize(("query", "status"), [("?format=json", 200), ("?format=api", 404), ("?format=", 200)])
    async def test_format_parameter_as_label_studio(self, proxy: Proxy, query: str, status: int) -> None:
        proxy.fake.add_annotation()
        response = await proxy.client.get(f"/api/annotations/1/{query}", headers=proxy.auth())
        assert response.status == status

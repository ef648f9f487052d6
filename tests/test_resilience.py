"""Resilience: stale-if-error, the upstream bound, retries and circuit breaker, Redis failing open, shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.keys import READINESS, SERVICE
from tests.fakes.label_studio import FakeLabelStudio
from tests.support.cache_status import status_of
from tests.support.clock import Clock
from tests.support.ports import free_port
from tests.support.processes import clean_environment, wait_until_healthy
from tests.support.proxies import CLIENT_KEY, Proxy, ProxyFactory, ServerFactory
from tests.support.redis_servers import running_redis
from tests.support.samples import encode, sample
from tests.support.waiting import wait_until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TTL = 300.0
STALE_TTL = 60.0


@pytest.fixture(params=["memory", "redis"])
async def proxy(request: pytest.FixtureRequest, make_proxy: ProxyFactory) -> Proxy:
    settings: dict[str, Any] = {"proxy_cache_ttl": TTL, "proxy_stale_ttl": STALE_TTL}
    if request.param == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")
    return await make_proxy(**settings)


async def get(proxy: Proxy, annotation_id: int = 1, cache_control: str | None = None) -> aiohttp.ClientResponse:
    more = {} if cache_control is None else {"Cache-Control": cache_control}
    return await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth() | more)


async def opened_by_five_failing_ids(proxy: Proxy, annotations: int) -> None:
    """``annotations`` annotations in the fake, and the circuit opened: ids 1 to 5 each answered 500 (502 here)."""
    for _ in range(annotations):
        proxy.fake.add_annotation()
    proxy.fake.fail_next(5, status=500)
    for annotation_id in range(1, 6):  # five different annotations fail: Label Studio as a whole is unwell
        assert (await get(proxy, annotation_id)).status == 502


async def cached_then_expired(proxy: Proxy, clock: Clock) -> bytes:
    """Cache annotation 1, then move past its TTL and stale window: the next request must ask Label Studio."""
    proxy.fake.add_annotation()
    body = await (await get(proxy)).read()
    clock.now += TTL + STALE_TTL + 1
    return body


class TestStaleIfError:
    @pytest.mark.parametrize("fault", ["500", "timeout", "garbage-status"])
    async def test_label_studio_failing_serves_the_last_validated_version(
        self, make_proxy: ProxyFactory, clock: Clock, fault: str
    ) -> None:
        proxy = await make_proxy(proxy_cache_ttl=TTL, proxy_stale_ttl=STALE_TTL, proxy_upstream_timeout=0.3)
        body = await cached_then_expired(proxy, clock)
        if fault == "500":
            proxy.fake.fail_next(status=500)
        elif fault == "timeout":
            proxy.fake.delay_next(30)
        else:
            proxy.fake.fail_next(3, status=503)
        response = await get(proxy)
        assert response.status == 200
        assert status_of(response.headers) == "annotation-proxy; hit; detail=stale-if-error"
        served = json.loads(await response.read())
        assert {k: v for k, v in served.items() if k != "created_ago"} == {
            k: v for k, v in json.loads(body).items() if k != "created_ago"
        }
        # Counted apart from ordinary stale answers: an outage must not look like revalidation on a dashboard.
        assert proxy.metric("cache_requests_total", result="stale_if_error") == 1
        assert proxy.metric("cache_requests_total", result="stale") == 0

    async def test_label_studio_down_serves_the_cached_copy_and_without_one_a_clear_502(
        self, proxy: Proxy, clock: Clock, upstream: TestServer
    ) -> None:
        await cached_then_expired(proxy, clock)
        await upstream.close()  # connections are now refused
        response = await get(proxy)
        assert response.status == 200
        assert status_of(response.headers) == "annotation-proxy; hit; detail=stale-if-error"
        cold = await get(proxy, 2)
        assert cold.status in (502, 503)
        assert json.loads(await cold.read())["detail"] in (
            "Label Studio could not be reached.",
            "Label Studio is failing; the proxy has stopped calling it for a few seconds.",
        )

    @pytest.mark.parametrize(
        ("cache_control", "hidden"),
        [
            ("no-cache", False),
            ("max-age=60", False),
            ("min-fresh=10", False),
            ("max-stale=30", False),  # 61 s stale: more than this caller accepts
            ("max-age=100000", True),  # older copies than this one are welcome
            ("no-store", True),
        ],
    )
    async def test_a_copy_the_request_refuses_is_not_served_in_place_of_a_failure(
        self, proxy: Proxy, clock: Clock, cache_control: str, hidden: bool
    ) -> None:
        """A request that asks for a fresher answer than the cached one wants no stale one, failure or not (RFC
        9111 5.2.1; docs/freshness.md): it was served the copy once it was past the stale window, though a
        younger copy gave the error."""
        await cached_then_expired(proxy, clock)
        proxy.fake.fail_next(status=500)
        response = await get(proxy, 1, cache_control)
        if hidden:
            assert response.status == 200
            assert status_of(response.headers) == "annotation-proxy; hit; detail=stale-if-error"
        else:
            assert response.status == 502
            # Forwarded because what was cached was stale (RFC 9211 fwd=stale), not for want of a copy.
            assert status_of(response.headers) == "annotation-proxy; fwd=stale; fwd-status=500; detail=bad_status"

    async def test_a_stale_copy_max_age_alone_refused_is_served_in_place_of_a_failure(
        self, proxy: Proxy, clock: Clock
    ) -> None:
        """max-age alone refuses a stale copy: fetched first. When that fetch fails, the copy (within max-age) is
        served in place of the failure, as one past the stale window is (RFC 5861); it was a 502."""
        proxy.fake.add_annotation()
        await get(proxy)
        clock.now += TTL + STALE_TTL / 2  # stale, within the stale window
        proxy.fake.fail_next(status=500)
        response = await get(proxy, 1, "max-age=86400")
        assert (response.status, status_of(response.headers)) == (200, "annotation-proxy; hit; detail=stale-if-error")

    async def test_a_remembered_failure_says_why_it_was_asked_as_the_first_did(
        self, make_proxy: ProxyFactory, clock: Clock
    ) -> None:
        """A 500 for one id is answered again for 5 s without asking (proxy/failures.py): it said fwd=miss where
        the first, for the same expired copy, said fwd=stale."""
        proxy = await make_proxy(proxy_cache_ttl=TTL, proxy_stale_ttl=STALE_TTL, proxy_stale_if_error_ttl=0)
        await cached_then_expired(proxy, clock)
        proxy.fake.fail_next(status=500)
        first, second = await get(proxy), await get(proxy)
        assert len(proxy.fake.annotation_gets()) == 2  # the second was not asked
        assert (first.status, second.status) == (502, 502)
        assert status_of(first.headers) == "annotation-proxy; fwd=stale; fwd-status=500; detail=bad_status"
        assert status_of(second.headers) == status_of(first.headers)

    async def test_a_copy_older_than_the_stale_if_error_ttl_is_not_served(
        self, make_proxy: ProxyFactory, clock: Clock
    ) -> None:
        proxy = await make_proxy(proxy_cache_ttl=TTL, proxy_stale_ttl=STALE_TTL, proxy_stale_if_error_ttl=600)
        await cached_then_expired(proxy, clock)
        clock.now += 600
        proxy.fake.fail_next(status=500)
        assert (await get(proxy)).status == 502

    async def test_a_404_is_not_hidden(self, proxy: Proxy, clock: Clock) -> None:
        await cached_then_expired(proxy, clock)
        proxy.fake.delete_annotation(1)
        assert (await get(proxy)).status == 404

    async def test_an_invalid_body_is_not_hidden(self, proxy: Proxy, clock: Clock) -> None:
        await cached_then_expired(proxy, clock)
        proxy.fake.respond_raw_next(encode(sample(last_action="exploded")))
        assert (await get(proxy)).status == 502


class TestUpstreamProtection:
    async def test_concurrent_upstream_requests_are_bounded(self, make_proxy: ProxyFactory) -> None:
        proxy = await make_proxy(proxy_upstream_max_connections=2)
        for _ in range(10):
            proxy.fake.add_annotation()
        proxy.fake.hold()
        requests = [asyncio.create_task(get(proxy, i)) for i in range(1, 11)]
        await wait_until(lambda: proxy.metric("upstream_waiting") == 8)
        await proxy.fake.wait_for_annotation_gets(2)
        assert len(proxy.fake.annotation_gets()) == 2  # eight wait their turn
        proxy.fake.release()
        assert {r.status for r in await asyncio.gather(*requests)} == {200}
        assert proxy.metric("upstream_waiting") == 0

    async def test_the_circuit_opens_after_consecutive_failures_and_probes_one_at_a_time(
        self, make_proxy: ProxyFactory, steady: Clock
    ) -> None:
        proxy = await make_proxy()
        await opened_by_five_failing_ids(proxy, annotations=8)
        assert proxy.metric("upstream_circuit_state", state="open") == 1

        refused = await get(proxy, 6)  # not sent: Label Studio gets a rest
        assert refused.status == 503
        assert "stopped calling it" in json.loads(await refused.read())["detail"]
        assert len(proxy.fake.annotation_gets()) == 5

        steady.now += 6  # the cooldown has passed: one probe may go
        proxy.fake.hold()
        probe = asyncio.create_task(get(proxy, 6))
        await proxy.fake.wait_for_annotation_gets(6)
        assert proxy.metric("upstream_circuit_state", state="half_open") == 1
        assert (await get(proxy, 7)).status == 503  # only one probe at a time
        proxy.fake.release()
        assert (await probe).status == 200
        assert proxy.metric("upstream_circuit_state", state="closed") == 1
        assert (await get(proxy, 7)).status == 200

    async def test_a_passing_dependency_check_closes_the_circuit_on_a_replica_that_gets_no_misses(
        self, make_proxy: ProxyFactory, steady: Clock
    ) -> None:
        """Without a miss, nothing probed an open circuit: its gauge said "open" for as long as the replica served
        hits only, and the critical alert paged after Label Studio had recovered."""
        proxy = await make_proxy()
        readiness = proxy.client.server.app[READINESS]
        await opened_by_five_failing_ids(proxy, annotations=6)
        assert proxy.metric("upstream_circuit_state", state="open") == 1

        await readiness.check()  # Label Studio answers again, but the circuit is still cooling down
        assert proxy.metric("upstream_circuit_state", state="open") == 1

        steady.now += 6
        token, proxy.fake.legacy_token = proxy.fake.legacy_token, "another"  # the check itself fails
        await readiness.check()
        assert readiness.report().checks["label_studio"]["status"] == "failing"
        assert proxy.metric("upstream_circuit_state", state="closed") == 0

        proxy.fake.legacy_token = token

        await readiness.check()  # the next check passes: no miss needed to close the circuit
        assert proxy.metric("upstream_circuit_state", state="closed") == 1
        assert len(proxy.fake.annotation_gets()) == 5  # no annotation fetched to find out
        assert (await get(proxy, 6)).status == 200

    async def test_with_callers_asking_their_probes_decide_not_the_dependency_check(
        self, make_proxy: ProxyFactory, steady: Clock
    ) -> None:
        """The check asks for an id that never exists, which a partly failing Label Studio may still answer: while
        callers ask, their probes decide, or each check would let a burst through and hide the outage."""
        proxy = await make_proxy()
        readiness = proxy.client.server.app[READINESS]
        await opened_by_five_failing_ids(proxy, annotations=7)
        assert (await get(proxy, 6)).status == 503  # refused while cooling down: a caller asked
        steady.now += 6
        await readiness.check()
        assert readiness.report().checks["label_studio"]["status"] == "ok"
        assert proxy.metric("upstream_circuit_state", state="closed") == 0
        await readiness.check()  # no caller asked since the last check: it stands for the probe nobody sent
        assert proxy.metric("upstream_circuit_state", state="closed") == 1
        assert (await get(proxy, 7)).status == 200

    async def test_a_queue_for_connections_that_outlasts_the_deadline_does_not_open_the_circuit(
        self, make_proxy: ProxyFactory
    ) -> None:
        """One caller keeping more ids outstanding than there are connection slots made the proxy's own queue
        outlast the deadline: each request timed out in the queue (or on the wire with what the queue left of its
        deadline), the breaker counted every one as Label Studio failing, and every other caller's misses got
        503 from a healthy Label Studio. A timeout counts only for a request that never waited for a slot."""
        proxy = await make_proxy(proxy_upstream_max_connections=1, proxy_upstream_timeout=0.5)
        for _ in range(8):
            proxy.fake.add_annotation()
        proxy.fake.delay_next(0.3, count=7)  # healthy, but one connection serves one request per 0.3 s
        flood = await asyncio.gather(*(get(proxy, annotation_id) for annotation_id in range(1, 8)))
        queued = [response for response in flood if response.status == 503]
        assert len(queued) >= 4  # never sent: the deadline passed in the queue
        for response in queued:
            assert "Every connection to Label Studio was busy" in json.loads(await response.read())["detail"]
            assert status_of(response.headers) == "annotation-proxy; fwd=miss; detail=queue_timeout"
        assert proxy.metric("upstream_circuit_state", state="closed") == 1
        assert (await get(proxy, 8)).status == 200  # another caller's miss

    async def test_a_caller_flooding_a_slow_label_studio_does_not_open_the_circuit(
        self, make_proxy: ProxyFactory
    ) -> None:
        """Label Studio answers every id, in 0.4 of the 0.5 s allowed; one caller asks for a new id every 75 ms
        through four connections. Requests that waited too long time out on the wire, while Label Studio answers
        the others: it is slow, not hanging, and other callers' misses must still be sent."""
        proxy = await make_proxy(proxy_upstream_max_connections=4, proxy_upstream_timeout=0.5)
        for _ in range(41):
            proxy.fake.add_annotation()
        proxy.fake.delay_next(0.4, count=40)
        flood = []
        for annotation_id in range(1, 41):
            flood.append(asyncio.create_task(get(proxy, annotation_id)))
            await asyncio.sleep(0.075)
        statuses = [response.status for response in await asyncio.gather(*flood)]
        assert statuses.count(504) + statuses.count(503) >= 5  # enough timeouts to open it, were they counted
        assert proxy.metric("upstream_circuit_state", state="closed") == 1
        assert (await get(proxy, 41)).status == 200

    async def test_label_studio_hanging_under_steady_load_opens_the_circuit_with_few_connections(
        self, make_proxy: ProxyFactory
    ) -> None:
        """Two connections, a new id every 40 ms, and Label Studio hangs: after the first two, every request waited
        for its connection and had little of its deadline left on the wire, so none counted and the breaker never
        opened. Once Label Studio has answered nothing for a whole timeout, their timeouts count."""
        proxy = await make_proxy(proxy_upstream_max_connections=2, proxy_upstream_timeout=0.6)
        proxy.fake.hold()
        requests = []
        for annotation_id in range(1, 41):
            requests.append(asyncio.create_task(get(proxy, annotation_id)))
            await asyncio.sleep(0.04)
        await asyncio.gather(*requests)
        assert proxy.metric("upstream_circuit_state", state="open") == 1
        proxy.fake.release()

    async def test_one_id_that_times_out_again_and_again_counts_once(self, make_proxy: ProxyFactory) -> None:
        """As a 500 for one id does: a caller repeating an id Label Studio cannot answer in time (or one it picked
        for that) must not open the circuit for everyone; several such ids do."""
        proxy = await make_proxy(proxy_upstream_timeout=0.3)
        for _ in range(7):
            proxy.fake.add_annotation()
        proxy.fake.delay_next(1.0, count=6)
        for _ in range(6):
            assert (await get(proxy, 1)).status == 504
        assert proxy.metric("upstream_circuit_state", state="closed") == 1
        assert (await get(proxy, 2)).status == 200
        proxy.fake.delay_next(1.0, count=5)
        for annotation_id in range(3, 8):  # five ids since the last success
            assert (await get(proxy, annotation_id)).status == 504
        assert proxy.metric("upstream_circuit_state", state="open") == 1

    async def test_label_studio_hanging_behind_a_queue_still_opens_the_circuit(self, make_proxy: ProxyFactory) -> None:
        """Requests that waited a moment for their slots, then hung on the wire, are Label Studio hanging."""
        proxy = await make_proxy(proxy_upstream_max_connections=5, proxy_upstream_timeout=1.0)
        for _ in range(15):
            proxy.fake.add_annotation()
        proxy.fake.delay_next(0.15, count=5)
        answered = [asyncio.create_task(get(proxy, annotation_id)) for annotation_id in range(1, 6)]
        await proxy.fake.wait_for_annotation_gets(5)
        proxy.fake.hold()  # from now on Label Studio hangs
        queued = [asyncio.create_task(get(proxy, annotation_id)) for annotation_id in range(6, 11)]
        await wait_until(lambda: proxy.metric("upstream_waiting") == 5)
        assert {response.status for response in await asyncio.gather(*answered)} == {200}
        # Sent after a wait, 0.85 s after Label Studio's last answer: not yet a whole timeout of silence.
        assert {response.status for response in await asyncio.gather(*queued)} == {504}
        assert proxy.metric("upstream_circuit_state", state="closed") == 1
        more = await asyncio.gather(*(get(proxy, annotation_id) for annotation_id in range(11, 16)))
        assert {response.status for response in more} == {504}
        assert proxy.metric("upstream_circuit_state", state="open") == 1
        proxy.fake.release()

    @pytest.mark.parametrize("status", [502, 503, 504])
    async def test_gateway_errors_for_one_id_count_as_label_studio_failing(
        self, make_proxy: ProxyFactory, status: int
    ) -> None:
        proxy = await make_proxy(proxy_upstream_timeout=0.5)
        proxy.fake.add_annotation()
        proxy.fake.fail_next(100, status=status)
        for _ in range(5):
            await get(proxy)
            if proxy.metric("upstream_circuit_state", state="open") == 1:
                break
        assert proxy.metric("upstream_circuit_state", state="open") == 1


class TestOneFailingAnnotation:
    """One annotation that makes Label Studio answer 500 (a bug on its side, or an id a hostile caller picked)
    must not cut every other caller off: it counts once for the breaker, and is remembered for a few seconds."""

    async def test_a_caller_repeating_an_id_that_fails_does_not_open_the_circuit_for_everyone(
        self, make_proxy: ProxyFactory, aiohttp_server: ServerFactory, fake_ls: FakeLabelStudio, clock: Clock
    ) -> None:
        asked_for_1: list[str] = []

        @web.middleware
        async def annotation_1_is_broken(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path == "/api/annotations/1/":
                asked_for_1.append(request.path)
                return web.json_response({"detail": "A server error occurred."}, status=500)
            return await handler(request)

        app = fake_ls.app()
        app.middlewares.insert(0, annotation_1_is_broken)
        broken = await aiohttp_server(app)
        proxy = await make_proxy(label_studio_url=str(broken.make_url("/")))
        for _ in range(31):
            fake_ls.add_annotation()
        for round_ in range(6):  # what the review did: six GETs for the failing id every second, for six seconds
            for _ in range(6):
                response = await get(proxy, 1)
                assert response.status == 502
                assert status_of(response.headers) == ("annotation-proxy; fwd=miss; fwd-status=500; detail=bad_status")
            assert proxy.metric("upstream_circuit_state", state="closed") == 1
            for other in range(2 + 5 * round_, 7 + 5 * round_):  # other callers' cold lookups all succeed
                assert (await get(proxy, other)).status == 200
            clock.now += 1
        assert len(asked_for_1) == 2  # remembered for 5 s, then asked again

    async def test_a_remembered_failure_answers_forced_requests_too(self, make_proxy: ProxyFactory) -> None:
        """With a copy cached, a no-cache request for an id whose last fetch got a 500 asked Label Studio again
        each time (only a request with nothing cached was answered from the memory of it)."""
        proxy = await make_proxy()
        proxy.fake.add_annotation()
        assert (await get(proxy, 1)).status == 200
        proxy.fake.fail_next(5, status=500)
        for _ in range(5):
            response = await get(proxy, 1, "no-cache")
            assert response.status == 502
            assert status_of(response.headers) == "annotation-proxy; fwd=request; fwd-status=500; detail=bad_status"
        assert len(proxy.fake.annotation_gets()) == 2  # the first read, then one forced fetch: remembered since
        assert (await get(proxy, 1)).status == 200  # the copy, for a request that accepts it

    async def test_the_failure_is_remembered_for_that_id_alone_then_asked_again(
        self, make_proxy: ProxyFactory, clock: Clock
    ) -> None:
        proxy = await make_proxy()
        proxy.fake.add_annotation()
        proxy.fake.add_annotation()
        proxy.fake.fail_next(1, status=500)
        assert (await get(proxy, 1)).status == 502
        assert (await get(proxy, 1)).status == 502  # from memory
        assert (await get(proxy, 2)).status == 200  # another id is asked for as usual
        assert len(proxy.fake.annotation_gets(1)) == 1
        clock.now += 5
        assert (await get(proxy, 1)).status == 200
        assert len(proxy.fake.annotation_gets(1)) == 2


class TestRedisFailsOpen:
    async def test_redis_dying_and_coming_back_needs_no_restart(self, make_proxy: ProxyFactory, steady: Clock) -> None:
        with running_redis() as redis:
            proxy = await make_proxy(redis_url=redis.url, proxy_redis_timeout=0.2, proxy_check_interval=0.05)
            proxy.fake.add_annotation()
            await get(proxy)
            assert status_of((await get(proxy)).headers) == "annotation-proxy; hit"
            port = redis.port
        # The hot tier hears its subscription drop and stops serving what it kept (it could not hear changes).
        await wait_until(lambda: not proxy.client.app[SERVICE].hot.enabled)
        # Redis is gone: every request still gets its answer, from Label Studio, and the breaker opens.
        for _ in range(5):
            response = await get(proxy)
            assert response.status == 200
            assert status_of(response.headers).startswith("annotation-proxy; fwd=miss")
        assert proxy.metric("cache_available") == 0
        await wait_until(lambda: proxy.metric("dependency_up", dependency="redis") == 0)
        readiness = await proxy.client.get("/readyz")
        assert (readiness.status, (await readiness.json())["status"]) == (200, "degraded")

        with running_redis(port=port):  # back, empty, on the same address
            steady.now += 6  # the breaker's cooldown: the next operation probes Redis
            await get(proxy)  # a probe that succeeds, then a fetch that is stored
            assert status_of((await get(proxy)).headers) == "annotation-proxy; hit"
            assert proxy.metric("cache_available") == 1


async def test_sigterm_lets_requests_in_flight_finish(upstream: TestServer, fake_ls: FakeLabelStudio) -> None:
    fake_ls.add_annotation()
    port = free_port()
    env = clean_environment()
    env |= {
        "LABEL_STUDIO_URL": str(upstream.make_url("/")),
        "LABEL_STUDIO_API_KEY": fake_ls.legacy_token,
        "PROXY_PORT": str(port),
        "PROXY_CLIENT_KEYS": CLIENT_KEY,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    await wait_until_healthy(base, process)
    fake_ls.hold()
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(
            session.get(f"{base}/api/annotations/1/", headers={"Authorization": f"Token {CLIENT_KEY}"})
        )
        await fake_ls.wait_for_annotation_gets(1)
        process.send_signal(signal.SIGTERM)

        async def refuses_new_connections() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            writer.close()
            return False

        for _ in range(400):  # the listener closes at once (a condition polled, not a timing assertion)
            if await refuses_new_connections():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the proxy kept listening after SIGTERM")
        fake_ls.release()
        response = await in_flight
        assert response.status == 200
        assert json.loads(await response.read())["id"] == 1
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    messages = [json.loads(line)["msg"] for line in stderr.decode().splitlines()]
    assert "shutting down: finishing requests in flight" in messages
    assert messages[-1] == "stopped"

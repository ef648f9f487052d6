"""The proxy's own credentials: legacy tokens, and personal access tokens with their refresh flow."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tests.fakes.label_studio import FakeLabelStudio
from tests.support.clock import Clock
from tests.support.proxies import Proxy, ProxyFactory, ServerFactory
from tests.support.waiting import wait_until


def authorizations(fake: FakeLabelStudio) -> list[str]:
    return [g.headers["Authorization"] for g in fake.annotation_gets()]


async def test_legacy_token_is_sent_as_token(make_proxy: ProxyFactory, fake_ls: FakeLabelStudio) -> None:
    proxy = await make_proxy()
    fake_ls.add_annotation()
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    assert authorizations(fake_ls) == [f"Token {fake_ls.legacy_token}"]
    assert fake_ls.refresh_calls == 0


async def test_personal_access_token_is_exchanged_once_and_sent_as_bearer(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio
) -> None:
    pat = fake_ls.issue_personal_access_token()
    proxy = await make_proxy(label_studio_api_key=pat)
    for _ in range(3):
        fake_ls.add_annotation()
    for annotation_id in (1, 2, 3):
        response = await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())
        assert response.status == 200
    assert fake_ls.refresh_calls == 1
    sent = authorizations(fake_ls)
    assert len(set(sent)) == 1
    assert sent[0].startswith("Bearer ")
    assert pat not in sent[0]
    assert proxy.metric("token_refreshes_total", outcome="ok") == 1


async def test_access_token_is_refreshed_before_it_expires(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock
) -> None:
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token())
    for _ in range(3):
        fake_ls.add_annotation()
    await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    clock.now += 280  # inside the last 30 s of the 300 s access token: still valid, but due
    response = await proxy.client.get("/api/annotations/2/", headers=proxy.auth())
    assert response.status == 200  # sent with that token, which is renewed meanwhile
    await wait_until(lambda: fake_ls.refresh_calls == 2)
    await wait_until(lambda: proxy.metric("token_refreshes_total", outcome="ok") == 2)
    assert (await proxy.client.get("/api/annotations/3/", headers=proxy.auth())).status == 200
    # Refreshed before it expired: Label Studio never had to reject a request.
    assert len(fake_ls.annotation_gets()) == 3
    assert len(set(authorizations(fake_ls))) == 2


async def test_rejected_access_token_is_refreshed_once_and_the_request_retried(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio
) -> None:
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token())
    fake_ls.add_annotation()
    fake_ls.add_annotation()
    await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    fake_ls.revoke_access_tokens()
    response = await proxy.client.get("/api/annotations/2/", headers=proxy.auth())
    assert response.status == 200
    assert json.loads(await response.read())["id"] == 2
    assert fake_ls.refresh_calls == 2
    assert len(fake_ls.annotation_gets(2)) == 2
    assert proxy.metric("upstream_requests_total", outcome="auth_rejected") == 1


async def test_concurrent_requests_share_one_refresh(make_proxy: ProxyFactory, fake_ls: FakeLabelStudio) -> None:
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token())
    for _ in range(50):
        fake_ls.add_annotation()
    responses = await asyncio.gather(
        *(proxy.client.get(f"/api/annotations/{i}/", headers=proxy.auth()) for i in range(1, 51))
    )
    assert {r.status for r in responses} == {200}
    assert fake_ls.refresh_calls == 1


async def test_revoked_personal_access_token_means_misconfigured(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock, steady: Clock
) -> None:
    pat = fake_ls.issue_personal_access_token()
    fake_ls.revoke_refresh_token(pat)
    proxy = await make_proxy(label_studio_api_key=pat)
    fake_ls.add_annotation()
    assert proxy.metric("token_refreshes_total", outcome="rejected") == 1  # the start-up dependency check
    response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    assert response.status == 502
    body = await response.read()
    assert b"misconfigured" in body
    assert pat.encode() not in body
    assert fake_ls.annotation_gets() == []
    assert proxy.metric("token_refreshes_total", outcome="rejected") == 1  # asked again a second later, no sooner
    steady.now += 1  # past the second in which a failed exchange is not tried again
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 502
    assert proxy.metric("token_refreshes_total", outcome="rejected") == 2


async def test_a_401_after_a_fresh_token_is_not_retried_forever(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio
) -> None:
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token())
    fake_ls.add_annotation()
    fake_ls.fail_next(2, status=401)
    response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    assert response.status == 502
    assert b"misconfigured" in await response.read()
    assert len(fake_ls.annotation_gets()) == 2
    assert fake_ls.refresh_calls == 2


@pytest.mark.parametrize(("padding", "status"), [(1_000, 200), (100_000, 502)])
async def test_a_refresh_answer_is_read_within_its_bound(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, padding: int, status: int
) -> None:
    """The refresh's answer is an access token of a few hundred bytes: an endpoint that answers far more (64 KiB)
    is not read further, and its token is not used."""
    fake_ls.refresh_padding = padding  # from the first refresh on, the start-up check's
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token())
    fake_ls.add_annotation()
    response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    assert response.status == status
    assert len(fake_ls.annotation_gets()) == (status == 200)


async def test_behind_a_path_of_its_own_the_token_is_refreshed_below_it(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, aiohttp_server: ServerFactory
) -> None:
    """Label Studio at ``http://host/ls`` (a shared ingress, no trailing slash): the refresh goes there too."""
    ingress = web.Application()
    ingress.add_subapp("/ls/", fake_ls.app())
    server = await aiohttp_server(ingress)
    proxy = await make_proxy(
        label_studio_url=str(server.make_url("/ls")), label_studio_api_key=fake_ls.issue_personal_access_token()
    )
    fake_ls.add_annotation()
    response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    assert response.status == 200
    assert fake_ls.refresh_calls == 1
    assert authorizations(fake_ls)[0].startswith("Bearer ")


async def due_for_a_refresh(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock, count: int, **settings: object
) -> Proxy:
    """A proxy on a personal access token whose access token has expired, and ``count`` annotations."""
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token(), **settings)
    for _ in range(count):
        fake_ls.add_annotation()
    clock.now += 300  # the access token exchanged at start-up has expired
    return proxy


async def test_a_failed_refresh_answers_the_requests_meanwhile_without_exchanging_again(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock, steady: Clock
) -> None:
    """Every miss behind the lock exchanged again, one after another, once the exchange before had failed: while
    Label Studio is down, ten misses made ten refreshes, each waiting for the one before."""
    proxy = await due_for_a_refresh(make_proxy, fake_ls, clock, 10)
    fake_ls.fail_next_refreshes(1, status=503)  # the next exchange would succeed
    responses = await asyncio.gather(
        *(proxy.client.get(f"/api/annotations/{i}/", headers=proxy.auth()) for i in range(1, 11))
    )
    assert {r.status for r in responses} == {502}
    # Not the annotation's status: no fwd-status, and the detail says what failed.
    assert {r.headers["Cache-Status"] for r in responses} == {"annotation-proxy; fwd=miss; detail=token_refresh_failed"}
    assert fake_ls.refresh_calls == 2  # at start-up, and the one that failed
    assert fake_ls.annotation_gets() == []
    assert proxy.metric("token_refreshes_total", outcome="error") == 1
    steady.now += 1  # past the second in which a failed exchange is not tried again
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    assert fake_ls.refresh_calls == 3


async def test_failed_refreshes_open_the_circuit_as_failed_requests_do(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock, steady: Clock
) -> None:
    """A refresh answered 503 counted as Label Studio answering: a Label Studio down behind its gateway was asked
    on every miss, and never rested."""
    proxy = await due_for_a_refresh(make_proxy, fake_ls, clock, 6)
    fake_ls.fail_next_refreshes(5, status=503)
    statuses = []
    for annotation_id in range(1, 7):
        response = await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())
        statuses.append((response.status, response.headers["Cache-Status"].rsplit("=", 1)[-1]))
        steady.now += 1  # the next miss exchanges again
    # The fifth failed exchange opens the circuit: that miss's retry, and the next miss, are refused.
    assert statuses == [(502, "token_refresh_failed")] * 4 + [(503, "circuit_open")] * 2
    assert fake_ls.refresh_calls == 6  # at start-up, and one per miss: the retries within a miss did not ask again


async def test_a_failed_refresh_is_not_remembered_as_the_annotation_failing(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock, steady: Clock
) -> None:
    """A refresh's 500 was taken for the annotation's own 500, and the id answered 502 for seconds after."""
    proxy = await due_for_a_refresh(make_proxy, fake_ls, clock, 1)
    fake_ls.fail_next_refreshes(1, status=500)
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 502
    steady.now += 1  # past the second in which a failed exchange is not tried again
    response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    assert response.status == 200
    assert len(fake_ls.annotation_gets(1)) == 1


async def test_a_proxy_clock_ahead_of_label_studio_does_not_refresh_on_every_request(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio
) -> None:
    """The token's lifetime is Label Studio's exp less its iat; taken as exp less the proxy's now, a clock 400 s
    ahead made every access token due at once."""
    fake_ls.clock_offset = -400.0
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token())
    for annotation_id in range(1, 6):
        fake_ls.add_annotation()
        assert (await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())).status == 200
    assert fake_ls.refresh_calls == 1


async def test_an_exchange_outlives_the_request_that_started_it(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock
) -> None:
    """An exchange slower than the request's deadline was cancelled with the request: its failure was never
    remembered or counted, and the next request started another one."""
    proxy = await due_for_a_refresh(make_proxy, fake_ls, clock, 2, proxy_upstream_timeout=0.5)
    fake_ls.refresh_delay = 30.0  # longer than the exchange's own timeout
    first = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    assert first.status == 504  # the request's deadline
    await wait_until(lambda: proxy.metric("token_refreshes_total", outcome="error") == 1)  # the exchange's own
    second = await proxy.client.get("/api/annotations/2/", headers=proxy.auth())
    assert second.status == 502
    assert "detail=token_refresh_failed" in second.headers["Cache-Status"]
    assert fake_ls.refresh_calls == 2  # at start-up, and the one that timed out


async def test_a_failed_refresh_keeps_the_access_token_it_was_to_replace_while_that_is_good(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock
) -> None:
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token())
    fake_ls.add_annotation()
    clock.now += 280  # due for a refresh 30 s before the 300 s access token expires
    fake_ls.fail_next_refreshes(1, status=503)
    response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    assert response.status == 200
    assert fake_ls.refresh_calls == 2


async def test_a_refresh_that_hangs_before_the_access_token_expires_holds_no_request(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, clock: Clock
) -> None:
    """Requests waited for the exchange of a token still good for 30 s: a refresh endpoint that hangs made every
    miss a 504 at its deadline, and five of them opened the circuit."""
    proxy = await make_proxy(label_studio_api_key=fake_ls.issue_personal_access_token(), proxy_upstream_timeout=0.5)
    for _ in range(6):
        fake_ls.add_annotation()
    clock.now += 280  # due, not expired
    fake_ls.refresh_delay = 30.0
    statuses = [
        (await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())).status
        for annotation_id in range(1, 7)
    ]
    assert statuses == [200] * 6
    assert fake_ls.refresh_calls == 2  # at start-up, and the one still hanging

"""The proxy's own credentials: legacy tokens, and personal access tokens with their refresh flow."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tests.fakes.label_studio import FakeLabelStudio
from tests.support.clock import Clock
from tests.support.proxies import ProxyFactory, ServerFactory


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
    fake_ls.add_annotation()
    fake_ls.add_annotation()
    await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    clock.now += 280  # inside the last 30 s of the 300 s access token: still valid, but due
    response = await proxy.client.get("/api/annotations/2/", headers=proxy.auth())
    assert response.status == 200
    assert fake_ls.refresh_calls == 2
    # Refreshed before use: Label Studio never had to reject a request.
    assert len(fake_ls.annotation_gets()) == 2
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
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio
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

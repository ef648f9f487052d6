"""The fake Label Studio behaves like /work/shared/label-studio/BEHAVIOUR.md says the real one does."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from label_studio_sdk.client import LabelStudio

from tests.fakes.label_studio import (
    LEGACY_DISABLED,
    LS_VERSION,
    NOT_AUTHENTICATED,
    NOT_FOUND,
    FakeLabelStudio,
)
from tests.support.clock import Clock
from tests.support.django_oracle import timesince
from tests.support.proxies import ClientFactory, ServerFactory
from tests.support.samples import SAMPLE_BODY

ERROR_KEYS = ["id", "status_code", "version", "detail", "exc_info"]
START = datetime(2026, 11, 28, 12, 27, 33, 279095, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def fake(clock: Clock) -> FakeLabelStudio:
    return FakeLabelStudio(clock=clock)


@pytest.fixture
async def client(aiohttp_client: ClientFactory, fake: FakeLabelStudio) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(fake.app())


def legacy(fake: FakeLabelStudio) -> dict[str, str]:
    return {"Authorization": f"Token {fake.legacy_token}"}


async def assert_error(response: aiohttp.ClientResponse, status: int, detail: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/json"
    body: dict[str, Any] = json.loads(await response.read())
    assert list(body)[:5] == ERROR_KEYS
    assert body["status_code"] == status
    assert body["version"] == LS_VERSION
    assert body["detail"] == detail
    assert body["exc_info"] is None
    uuid.UUID(body["id"])
    return body


async def test_body_matches_the_captured_sample(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    # The clock starts at the sample's created_at; the real save stamped updated_at 42 us later.
    fake.add_annotation(updated_at="2026-11-28T12:27:33.279137Z")

    response = await client.get("/api/annotations/1/", headers=legacy(fake))

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    # Same keys in the same order, same values, same compact rendering: byte for byte.
    assert await response.read() == SAMPLE_BODY
    for header in ("ETag", "Last-Modified", "Cache-Control"):
        assert header not in response.headers


async def test_created_ago_is_computed_at_response_time_in_raw_utf8(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio, clock: Clock
) -> None:
    fake.add_annotation()
    clock.now += 3600 + 5 * 60 + 59

    raw = await (await client.get("/api/annotations/1/", headers=legacy(fake))).read()

    assert '"created_ago":"1\u00a0hour, 5\u00a0minutes"'.encode() in raw


@pytest.mark.parametrize(
    ("then", "now", "expected"),
    [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:59.999Z", "0 minutes"),
        ("2026-01-01T00:00:00Z", "2025-12-31T00:00:00Z", "0 minutes"),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "1 minute"),
        ("2026-01-01T00:00:00Z", "2026-01-01T01:05:00Z", "1 hour, 5 minutes"),
        ("2026-01-01T00:00:00Z", "2026-01-02T03:00:00Z", "1 day, 3 hours"),
        ("2026-01-01T00:00:00Z", "2026-01-03T00:30:00Z", "2 days"),
        ("2026-01-01T00:00:00Z", "2026-01-17T00:00:00Z", "2 weeks, 2 days"),
        ("2026-01-31T00:00:00Z", "2026-03-01T00:00:00Z", "1 month"),  # zero weeks end it
        ("2026-01-31T00:00:00Z", "2026-03-10T00:00:00Z", "1 month, 1 week"),
        ("2025-01-01T00:00:00Z", "2026-02-02T00:00:00Z", "1 year, 1 month"),
    ],
)
def test_timesince_matches_djangos(then: str, now: str, expected: str) -> None:
    result = timesince(datetime.fromisoformat(then), datetime.fromisoformat(now))
    assert result == expected.replace(" ", "\u00a0").replace(",\u00a0", ", ")


async def test_expand_completed_by_gives_the_user_object(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    fake.add_annotation()

    plain = await (await client.get("/api/annotations/1/", headers=legacy(fake))).json()
    expanded = await (
        await client.get("/api/annotations/1/?expand=completed_by&fields=id", headers=legacy(fake))
    ).json()

    assert plain["completed_by"] == 1
    assert json.dumps(expanded["completed_by"]) == json.dumps(
        {
            "id": 1,
            "first_name": "",
            "last_name": "",
            "avatar": None,
            "email": "admin@example.com",
            "initials": "ad",
        }
    )
    assert list(expanded) == list(plain)  # fields= is ignored


async def test_ids_are_parsed_like_djangos_int_route(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    for _ in range(6):
        fake.add_annotation()

    with_slash = await client.get("/api/annotations/6/", headers=legacy(fake))
    leading_zero = await client.get("/api/annotations/06/", headers=legacy(fake))
    no_slash = await client.get("/api/annotations/6", headers=legacy(fake), allow_redirects=False)

    for response in (with_slash, leading_zero, no_slash):
        assert response.status == 200
        assert (await response.json())["id"] == 6
    assert [r.path for r in fake.annotation_gets(6)] == [
        "/api/annotations/6/",
        "/api/annotations/06/",
        "/api/annotations/6",
    ]
    for path in ("/api/annotations/0/", f"/api/annotations/{2**63}/"):
        await assert_error(await client.get(path, headers=legacy(fake)), 404, NOT_FOUND)


@pytest.mark.parametrize("path", ["/api/annotations/abc/", "/api/annotations/-1/", "/api/annotations/1.0/", "/nope"])
async def test_other_paths_get_an_html_404(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio, path: str
) -> None:
    response = await client.get(path, headers=legacy(fake))

    assert response.status == 404
    assert response.content_type == "text/html"
    assert fake.annotation_gets() == []


async def test_authentication_errors_come_before_the_lookup(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    missing = await client.get("/api/annotations/999/")
    await assert_error(missing, 401, NOT_AUTHENTICATED)
    assert missing.headers["WWW-Authenticate"] == "Token"

    wrong = await client.get("/api/annotations/999/", headers={"Authorization": "Token nope"})
    await assert_error(wrong, 401, "Invalid token.")
    assert wrong.headers["WWW-Authenticate"] == "Token"

    garbage_bearer = await client.get("/api/annotations/1/", headers={"Authorization": "Bearer x"})
    await assert_error(garbage_bearer, 401, NOT_AUTHENTICATED)


async def test_disabled_legacy_tokens_get_their_own_401(aiohttp_client: ClientFactory) -> None:
    fake = FakeLabelStudio(legacy_enabled=False)
    fake.add_annotation()
    client = await aiohttp_client(fake.app())

    response = await client.get("/api/annotations/1/", headers=legacy(fake))

    await assert_error(response, 401, LEGACY_DISABLED)


async def test_every_response_sets_a_session_cookie(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    fake.add_annotation()
    pat = fake.issue_personal_access_token()
    responses = [
        await client.get("/api/annotations/1/", headers=legacy(fake)),
        await client.get("/api/annotations/1/"),
        await client.get("/api/annotations/2/", headers=legacy(fake)),
        await client.get("/api/annotations/x/"),
        await client.post("/api/token/refresh/", json={"refresh": pat}),
        await client.post("/api/token/refresh/", json={"refresh": "bad"}),
        await client.get("/health"),
    ]
    fake.fail_next()
    responses.append(await client.get("/api/annotations/1/", headers=legacy(fake)))

    session_ids = set()
    for response in responses:
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith("sessionid=")
        for attribute in ("expires=", "HttpOnly", "Max-Age=1209600", "Path=/", "SameSite=Lax"):
            assert attribute in cookie
        session_ids.add(cookie.split(";")[0])
    assert len(session_ids) == len(responses)


async def test_personal_access_token_refresh_and_access_expiry(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio, clock: Clock
) -> None:
    fake.add_annotation()
    pat = fake.issue_personal_access_token()

    refreshed = await client.post("/api/token/refresh/", json={"refresh": pat})
    assert refreshed.status == 200
    assert list(await refreshed.json()) == ["access"]
    access = (await refreshed.json())["access"]
    bearer = {"Authorization": f"Bearer {access}"}
    assert (await client.get("/api/annotations/1/", headers=bearer)).status == 200

    clock.now += 299
    assert (await client.get("/api/annotations/1/", headers=bearer)).status == 200
    clock.now += 1
    expired = await client.get("/api/annotations/1/", headers=bearer)
    await assert_error(expired, 401, NOT_AUTHENTICATED)
    assert expired.headers["WWW-Authenticate"] == "Token"

    access = (await (await client.post("/api/token/refresh/", json={"refresh": pat})).json())["access"]
    bearer = {"Authorization": f"Bearer {access}"}
    assert (await client.get("/api/annotations/1/", headers=bearer)).status == 200
    fake.revoke_access_tokens()
    await assert_error(await client.get("/api/annotations/1/", headers=bearer), 401, NOT_AUTHENTICATED)
    # A refresh token is not an access token.
    pat_as_bearer = {"Authorization": f"Bearer {pat}"}
    await assert_error(await client.get("/api/annotations/1/", headers=pat_as_bearer), 401, NOT_AUTHENTICATED)
    assert fake.refresh_calls == 2


async def test_refresh_errors(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio, clock: Clock
) -> None:
    invalid = await client.post("/api/token/refresh/", json={"refresh": "not-a-jwt"})
    await assert_error(invalid, 401, "Token is invalid")
    assert invalid.headers["WWW-Authenticate"] == 'Bearer realm="api"'

    forged = FakeLabelStudio().issue_personal_access_token()
    await assert_error(await client.post("/api/token/refresh/", json={"refresh": forged}), 401, "Token is invalid")

    revoked = fake.issue_personal_access_token()
    fake.revoke_refresh_token(revoked)
    await assert_error(
        await client.post("/api/token/refresh/", json={"refresh": revoked}),
        401,
        "Token is blacklisted",
    )

    short = fake.issue_personal_access_token(lifetime=60)
    clock.now += 60
    await assert_error(await client.post("/api/token/refresh/", json={"refresh": short}), 401, "Token is expired")

    missing = await assert_error(await client.post("/api/token/refresh/"), 400, "Validation error")
    assert missing["validation_errors"] == {"refresh": ["This field is required."]}
    assert fake.refresh_calls == 5


async def test_hold_piles_up_concurrent_gets_until_release(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    fake.add_annotation()
    fake.hold()

    gets = [asyncio.create_task(client.get("/api/annotations/1/", headers=legacy(fake))) for _ in range(3)]
    await fake.wait_for_annotation_gets(3)

    assert not any(task.done() for task in gets)
    fake.release()
    assert [response.status for response in await asyncio.gather(*gets)] == [200, 200, 200]
    assert len(fake.annotation_gets(1)) == 3


async def test_faults_replace_the_next_annotation_gets_only(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    fake.add_annotation()
    fake.fail_next(2, status=503)
    fake.respond_raw_next(b"<html>oops", content_type="text/html")

    assert (await client.get("/health")).status == 200  # not the annotation route
    first = await client.get("/api/annotations/1/")  # faults skip authentication
    await assert_error(first, 503, "Service Unavailable")
    assert (await client.get("/api/annotations/1/", headers=legacy(fake))).status == 503
    raw = await client.get("/api/annotations/1/", headers=legacy(fake))
    assert (raw.status, await raw.read()) == (200, b"<html>oops")
    assert raw.content_type == "text/html"
    assert (await client.get("/api/annotations/1/", headers=legacy(fake))).status == 200


async def test_a_delayed_get_can_time_out_without_stalling_teardown(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    fake.add_annotation()
    fake.delay_next(60)

    with pytest.raises(asyncio.TimeoutError):
        await client.get(
            "/api/annotations/1/",
            headers=legacy(fake),
            timeout=aiohttp.ClientTimeout(total=0.05),
        )
    assert (await client.get("/api/annotations/1/", headers=legacy(fake))).status == 200


async def test_saves_bump_updated_at_and_silent_changes_do_not(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio, clock: Clock
) -> None:
    created = fake.add_annotation(lead_time=1.25, extra_key="new in a later version")
    assert list(created)[-1] == "extra_key"
    assert created["updated_at"] == "2026-11-28T12:27:33.279095Z"

    fake.update_annotation(1, was_cancelled=True)  # the clock has not moved
    assert fake.annotation(1)["updated_at"] == "2026-11-28T12:27:33.279096Z"

    fake.set_annotation_fields_silently(1, ground_truth=True, created_username="Ann Lee x, 1")
    body = await (await client.get("/api/annotations/1/", headers=legacy(fake))).json()
    assert (body["ground_truth"], body["updated_at"]) == (True, "2026-11-28T12:27:33.279096Z")

    clock.now = datetime(2026, 11, 29, tzinfo=UTC).timestamp()
    patched = await client.patch("/api/annotations/1/", json={"id": 9}, headers=legacy(fake))
    assert (await patched.json())["updated_at"] == "2026-11-29T00:00:00Z"
    assert (await patched.json())["id"] == 1

    deleted = await client.delete("/api/annotations/1/", headers=legacy(fake))
    assert deleted.status == 204
    await assert_error(await client.get("/api/annotations/1/", headers=legacy(fake)), 404, NOT_FOUND)
    assert [r.method for r in fake.requests] == ["GET", "PATCH", "DELETE", "GET"]
    assert [r.method for r in fake.annotation_gets()] == ["GET", "GET"]


async def test_requests_are_recorded_as_received(
    client: TestClient[web.Request, web.Application], fake: FakeLabelStudio
) -> None:
    await client.get("/api/annotations/7/?expand=completed_by", headers={"X-Trace": "abc"})

    (recorded,) = fake.requests
    assert (recorded.method, recorded.path) == ("GET", "/api/annotations/7/")
    assert recorded.query == {"expand": "completed_by"}
    assert recorded.headers["X-Trace"] == "abc"


async def test_health(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/health")

    assert response.status == 200
    assert await response.read() == b'{"status": "UP"}'


# The SDK itself calls pydantic's deprecated parse_obj when it refreshes a token.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
@pytest.mark.parametrize("key", ["legacy", "pat"])
async def test_the_official_sdk_reads_an_annotation(aiohttp_server: ServerFactory, key: str) -> None:
    fake = FakeLabelStudio()  # real clock: the SDK checks token expiry against it
    fake.add_annotation()
    server = await aiohttp_server(fake.app())
    api_key = fake.legacy_token if key == "legacy" else fake.issue_personal_access_token()

    def read() -> Any:
        with httpx.Client(follow_redirects=True) as http:
            sdk = LabelStudio(  # type: ignore[no-untyped-call]
                base_url=str(server.make_url("/")), api_key=api_key, httpx_client=http
            )
            return sdk.annotations.get(id=1)

    annotation = await asyncio.to_thread(read)  # the SDK is synchronous

    assert annotation.id == 1
    assert annotation.completed_by == 1
    assert fake.refresh_calls == (1 if key == "pat" else 0)

"""The server-held token never appears in a response, a log line or an error, on any path."""

from __future__ import annotations

import logging

import pytest

from proxy.logs import JsonFormatter
from tests.conftest import CLIENT_KEY, Proxy, ProxyFactory
from tests.fakes.label_studio import FakeLabelStudio
from tests.redis_server import free_port
from tests.samples import encode, sample
from tests.webhooks import annotations_deleted

WEBHOOK_SECRET = "webhook-secret-for-the-leak-test"
ADMIN_KEY = "admin-key-for-the-leak-test-0123"


async def exercise_every_path(proxy: Proxy) -> list[bytes]:
    """Drive the proxy through success and every error it has; return every response, headers and body."""
    fake = proxy.fake
    fake.add_annotation()
    fake.add_annotation()
    fake.add_annotation()
    seen: list[bytes] = []

    async def call(method: str, path: str, *, auth: bool = True) -> None:
        response = await proxy.client.request(method, path, headers=proxy.auth() if auth else {})
        seen.append(repr(dict(response.headers)).encode() + await response.read())

    await call("GET", "/api/annotations/1/")  # miss
    await call("GET", "/api/annotations/1/")  # hit
    await call("HEAD", "/api/annotations/1")
    await call("GET", "/api/annotations/1/?expand=completed_by")
    await call("GET", "/api/annotations/404/")  # upstream 404
    await call("GET", "/api/annotations/404/")  # negative hit
    await call("GET", "/api/annotations/1/", auth=False)  # 401
    await call("PATCH", "/api/annotations/1/")  # 405
    await call("GET", "/api/annotations/abc/")  # bad id
    await call("GET", "/api/users/")  # unknown route
    fake.respond_raw_next(encode(sample(id=2, last_action="bogus")))
    await call("GET", "/api/annotations/2/")  # invalid body
    fake.respond_raw_next(b"not json at all")
    await call("GET", "/api/annotations/2/")
    fake.fail_next(status=500)
    await call("GET", "/api/annotations/2/")  # upstream 5xx
    fake.fail_next(status=401)
    fake.fail_next(status=401)
    await call("GET", "/api/annotations/3/")  # credentials rejected
    fake.delay_next(30)
    await call("GET", "/api/annotations/3/")  # timeout
    for headers in ({"X-Webhook-Secret": WEBHOOK_SECRET}, {"X-Webhook-Secret": "wrong-secret-0123456789"}):
        response = await proxy.client.post("/webhooks/label-studio", json=annotations_deleted(3), headers=headers)
        seen.append(repr(dict(response.headers)).encode() + await response.read())
    for key in (ADMIN_KEY, "not-the-admin-key-0123"):
        response = await proxy.client.delete("/cache/annotations/1", headers={"Authorization": f"Token {key}"})
        seen.append(repr(dict(response.headers)).encode() + await response.read())
    await call("GET", "/readyz")
    await call("GET", "/healthz")
    await call("GET", "/metrics")
    return seen


def secrets_of(fake: FakeLabelStudio, *extra: str) -> set[str]:
    """The proxy's credential and every access token Label Studio handed it."""
    tokens = {fake.legacy_token, *extra}
    for sent in fake.requests:
        authorization = sent.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            tokens.add(authorization.removeprefix("Bearer "))
    return tokens


@pytest.mark.parametrize("kind", ["legacy", "personal-access-token"])
async def test_token_never_appears_in_responses_or_logs(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    pat = fake_ls.issue_personal_access_token()
    key = pat if kind == "personal-access-token" else fake_ls.legacy_token
    with caplog.at_level(logging.DEBUG):
        proxy = await make_proxy(
            label_studio_api_key=key,
            proxy_upstream_timeout=0.3,
            proxy_webhook_secret=WEBHOOK_SECRET,
            proxy_admin_keys=(ADMIN_KEY,),
        )
        responses = await exercise_every_path(proxy)
        # And once where Label Studio cannot be reached at all.
        unreachable = await make_proxy(label_studio_api_key=key, label_studio_url=f"http://127.0.0.1:{free_port()}")
        response = await unreachable.client.get("/api/annotations/1/", headers=unreachable.auth())
        responses.append(await response.read())
        responses.append(await (await unreachable.client.get("/readyz")).read())
        # And with the cache down, and (for a PAT) with the refresh refused.
        no_cache = await make_proxy(label_studio_api_key=key, redis_url=f"redis://:{key}@127.0.0.1:{free_port()}/0")
        responses.append(await (await no_cache.client.get("/api/annotations/1/", headers=no_cache.auth())).read())
        responses.append(await (await no_cache.client.get("/readyz")).read())
        if kind == "personal-access-token":
            fake_ls.revoke_access_tokens()
            fake_ls.revoke_refresh_token(pat)
            refused = await make_proxy(label_studio_api_key=pat)
            response = await refused.client.get("/api/annotations/2/", headers=refused.auth())
            assert response.status == 502
            responses.append(await response.read())

    tokens = secrets_of(fake_ls, pat)
    if kind == "personal-access-token":  # the access tokens Label Studio handed out are secrets too
        assert any(token not in (pat, fake_ls.legacy_token) for token in tokens)
    formatter = JsonFormatter()
    log_text = "\n".join(formatter.format(record) for record in caplog.records)
    assert "upstream failure" in log_text  # the error paths were logged, so this test can fail
    assert "rejected an invalid upstream body" in log_text
    for token in tokens:
        assert token not in log_text
        for body in responses:
            assert token.encode() not in body
    for secret in (CLIENT_KEY, WEBHOOK_SECRET, ADMIN_KEY):
        assert secret not in log_text
        assert all(secret.encode() not in body for body in responses)

"""The server-held token, the client and admin keys, the webhook secret and the Redis password never appear in a
response, a log line, a metric, an error, a repr or a traceback, on any path."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from proxy.logs import JsonFormatter
from proxy.settings import Settings
from tests.fakes.label_studio import FakeLabelStudio
from tests.support.ports import free_port
from tests.support.proxies import CLIENT_KEY, ClientFactory, Proxy, ProxyFactory, ProxyTestServer
from tests.support.samples import encode, sample
from tests.support.webhooks import annotations_deleted

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
        no_sentinel = await make_proxy(
            label_studio_api_key=key,
            redis_url=f"redis+sentinel://:{key}@127.0.0.1:{free_port()}/annotations?sentinel_password={key}",
            proxy_redis_mode="sentinel",
        )
        responses.append(await (await no_sentinel.client.get("/api/annotations/1/", headers=no_sentinel.auth())).read())
        responses.append(await (await no_sentinel.client.get("/readyz")).read())
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


REDIS_PASSWORD = "redis-password-for-the-leak-test"
SCOPED_KEY = "scoped-client-key-for-the-leak-test"


def every_secret(fake: FakeLabelStudio, *extra: str) -> set[str]:
    return secrets_of(fake, *extra) | {CLIENT_KEY, SCOPED_KEY, WEBHOOK_SECRET, ADMIN_KEY, REDIS_PASSWORD}


async def proxy_with_every_secret(make_proxy: ProxyFactory, api_key: str, **overrides: Any) -> Proxy:
    fields: dict[str, Any] = {
        "label_studio_api_key": api_key,
        "proxy_upstream_timeout": 0.3,
        "proxy_client_keys": (CLIENT_KEY, f"{SCOPED_KEY}:2+3"),
        "proxy_webhook_secret": WEBHOOK_SECRET,
        "proxy_admin_keys": (ADMIN_KEY,),
    }
    return await make_proxy(**(fields | overrides))


def metric_texts(registry: CollectorRegistry) -> list[str]:
    """Every metric name, label name and label value the registry holds."""
    texts = []
    for family in registry.collect():
        for point in family.samples:
            texts.append(point.name)
            texts.extend(f"{name}={value}" for name, value in point.labels.items())
    return texts


@pytest.mark.parametrize("kind", ["legacy", "personal-access-token"])
async def test_metrics_never_carry_a_secret(make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, kind: str) -> None:
    pat = fake_ls.issue_personal_access_token()
    key = pat if kind == "personal-access-token" else fake_ls.legacy_token
    proxy = await proxy_with_every_secret(make_proxy, key)
    await exercise_every_path(proxy)
    no_cache = await proxy_with_every_secret(
        make_proxy, key, redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0", proxy_redis_timeout=0.1
    )
    await no_cache.client.get("/api/annotations/1/", headers=no_cache.auth())
    await no_cache.client.get("/readyz")

    for each in (proxy, no_cache):
        exposition = await (await each.client.get("/metrics")).text()
        texts = [exposition, *metric_texts(each.registry)]
        for secret in every_secret(fake_ls, pat):
            assert all(secret not in text for text in texts), secret
    # The paths that handled the secrets were counted, so the search above had something to search.
    assert proxy.metric("webhook_events_total", action="other", outcome="unauthorized") == 1
    assert proxy.metric("http_requests_total", route="annotation", method="GET", status="401") == 1
    assert no_cache.metric("cache_errors_total", operation="get") >= 1


def reachable_reprs(*roots: object, depth: int = 6) -> dict[str, str]:
    """repr() of the roots and of everything the proxy's own objects hold, ``depth`` attributes deep.

    A str or bytes attribute is not itself repr'd (the object that holds a secret must hold it somewhere); a
    container, or any object, that shows a secret in its repr is what a log line, a debugger or an error
    tracker would print.
    """
    seen: dict[int, str] = {}
    found: dict[str, str] = {}

    def visit(obj: object, where: str, level: int) -> None:
        if isinstance(obj, str | bytes | int | float | bool | type(None)) or id(obj) in seen:
            return
        seen[id(obj)] = where
        found[where] = repr(obj)
        if level >= depth:
            return
        if isinstance(obj, dict):
            for key, value in obj.items():
                visit(value, f"{where}[{key!r}]", level + 1)
        elif isinstance(obj, list | tuple | set | frozenset):
            for index, value in enumerate(obj):
                visit(value, f"{where}[{index}]", level + 1)
        elif type(obj).__module__.startswith("proxy") or level == 0:
            attributes = getattr(obj, "__dict__", {})
            for name in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, name):
                    attributes = {**attributes, name: getattr(obj, name)}
            for name, value in attributes.items():
                visit(value, f"{where}.{name}", level + 1)

    for index, root in enumerate(roots):
        visit(root, f"root{index}:{type(root).__name__}", 0)
    return found


@pytest.mark.parametrize("kind", ["legacy", "personal-access-token"])
async def test_no_object_of_the_app_shows_a_secret_in_its_repr(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, kind: str
) -> None:
    pat = fake_ls.issue_personal_access_token()
    key = pat if kind == "personal-access-token" else fake_ls.legacy_token
    proxy = await proxy_with_every_secret(
        make_proxy, key, redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0", proxy_redis_timeout=0.1
    )
    fake_ls.add_annotation()
    response = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    assert response.status == 200  # so a personal access token has been exchanged for an access token
    app = proxy.client.app
    assert app is not None
    roots: list[object] = [app, proxy.settings, *(app[key] for key in app)]
    reprs = reachable_reprs(*roots)

    assert any("LegacyToken" in text or "PersonalAccessToken" in text for text in reprs.values())
    assert any("ClientKeys" in text for text in reprs.values())
    assert any("RedisStore" in text for text in reprs.values())
    for secret in every_secret(fake_ls, pat):
        leaking = [where for where, text in reprs.items() if secret in text]
        assert leaking == [], f"a secret shows in the repr of {leaking}"


class ExplodingStore:
    """A store with a bug: every operation raises something that is not a CacheError (so not a miss)."""

    name = "exploding"

    async def _explode(self, *args: object, **kwargs: object) -> Any:
        raise RuntimeError("the store has a bug")

    get = put = put_missing = invalidate = drop = task_deleted = ping = _explode

    async def close(self) -> None:
        return None


async def test_an_unhandled_error_logs_a_traceback_without_secrets(
    aiohttp_client: ClientFactory,
    upstream: TestServer,
    fake_ls: FakeLabelStudio,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(
        label_studio_url=str(upstream.make_url("/")),
        label_studio_api_key=fake_ls.legacy_token,
        proxy_client_keys=(CLIENT_KEY,),
        proxy_admin_keys=(ADMIN_KEY,),
        proxy_webhook_secret=WEBHOOK_SECRET,
        redis_url=None,
    )
    client = await aiohttp_client(ProxyTestServer(create_app(settings, store=ExplodingStore())))  # type: ignore[arg-type]
    fake_ls.add_annotation()
    with caplog.at_level(logging.DEBUG):
        answers = [
            await client.get("/api/annotations/1/", headers={"Authorization": f"Token {CLIENT_KEY}"}),
            await client.delete("/cache/annotations/1", headers={"Authorization": f"Token {ADMIN_KEY}"}),
            await client.post(
                "/webhooks/label-studio", json=annotations_deleted(1), headers={"X-Webhook-Secret": WEBHOOK_SECRET}
            ),
        ]
        bodies = [await answer.read() for answer in answers]
    assert [answer.status for answer in answers] == [500, 500, 500]
    for body in bodies:
        assert json.loads(body)["detail"] == "Internal server error."  # nothing of the internals

    formatter = JsonFormatter()
    log_text = "\n".join(formatter.format(record) for record in caplog.records)
    tracebacks = [r for r in caplog.records if r.getMessage() == "unhandled error" and r.exc_info]
    assert len(tracebacks) == 3  # the errors middleware logged each with its traceback
    assert "RuntimeError: the store has a bug" in log_text
    for secret in every_secret(fake_ls):
        assert secret not in log_text
        assert all(secret.encode() not in body for body in bodies)


@pytest.mark.parametrize(
    "authorization",
    [
        f"Authorization: Token {CLIENT_KEY}\x01".encode(),
        f"Authorization Token {CLIENT_KEY}".encode(),
        f"Authorization: Token {CLIENT_KEY}{'x' * 9000}".encode(),
    ],
    ids=["control-character", "missing-colon", "overlong"],
)
async def test_a_malformed_request_never_logs_the_client_key(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture, authorization: bytes
) -> None:
    proxy = await make_proxy()
    with caplog.at_level(logging.DEBUG):
        reader, writer = await asyncio.open_connection(proxy.client.host, proxy.client.port)
        writer.write(b"GET /api/annotations/1/ HTTP/1.1\r\nHost: proxy\r\n" + authorization + b"\r\n\r\n")
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.0 400 Bad Request")
    log_text = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert CLIENT_KEY not in log_text
    # The fact is still logged, for whoever looks into 400s: as a warning, naming the parser's error.
    [logged] = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert (logged.levelname, logged.getMessage()) == ("WARNING", "malformed HTTP request: answered 400")
    assert logged.error in {"BadHttpMessage", "InvalidHeader", "LineTooLong"}

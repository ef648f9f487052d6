"""Hardening at the HTTP level, over real sockets: what aiohttp's parser refuses never echoes a client key, only
HTTP/1.0 and 1.1 are spoken, request bodies have a deadline, a caller that goes away is not a server error, and
webhook ids are JSON integers and nothing else.

Requests that a client library would normalise or refuse to send are written byte for byte on a plain socket.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from proxy.server import ProxyRunner
from proxy.settings import Settings
from tests.fakes.label_studio import FakeLabelStudio
from tests.support import raw_http
from tests.support.cache_status import status_of
from tests.support.clock import Clock
from tests.support.proxies import CLIENT_KEY, Proxy, ProxyFactory
from tests.support.waiting import wait_until
from tests.support.webhooks import annotation_event, annotations_deleted, tasks_deleted

KEY = CLIENT_KEY.encode()
SECRET = "webhook-secret-0123456789"
AUTH = b"Authorization: Token " + KEY
HANG_GUARD = 5.0  # seconds; only so that a broken proxy fails the test instead of hanging it


async def exchange(proxy: Proxy, raw: bytes) -> bytes:
    """Write ``raw`` and read until the proxy closes the connection."""
    return await raw_http.exchange(proxy.client.host, proxy.client.port, raw)


def head_and_body(answer: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def header(lines: list[bytes], name: bytes) -> bytes | None:
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def error_json(body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(body)
    assert set(parsed) == {"id", "status_code", "version", "detail", "exc_info"}  # Label Studio's error shape
    return parsed


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> Proxy:
    proxy = await make_proxy(proxy_webhook_secret=SECRET, proxy_request_body_timeout=0.2)
    proxy.fake.add_annotation()
    return proxy


@dataclass
class Served:
    """The proxy served as ``python -m proxy`` serves it (web.run_app's defaults)."""

    host: str
    port: int
    server: web.Server
    registry: CollectorRegistry

    def requests(self, **labels: str) -> float:
        labels = {"route": "webhook", "method": "POST"} | labels
        return self.registry.get_sample_value("annotation_proxy_http_requests_total", labels) or 0.0


@pytest.fixture
async def served(
    request: pytest.FixtureRequest, upstream: TestServer, fake_ls: FakeLabelStudio, clock: Clock, steady: Clock
) -> AsyncIterator[Served]:
    """Unlike aiohttp's TestServer, web.run_app does not cancel a handler whose caller goes away: the handler
    sees the connection fail, which is the case to test. Indirect parameters are Settings fields."""
    settings = Settings(
        label_studio_url=str(upstream.make_url("/")),
        label_studio_api_key=fake_ls.legacy_token,
        proxy_client_keys=(CLIENT_KEY,),
        proxy_webhook_secret=SECRET,
        redis_url=None,
        **getattr(request, "param", {}),
    )
    registry = CollectorRegistry()
    runner = ProxyRunner(create_app(settings, registry=registry, clock=clock, monotonic=steady), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert runner.server is not None
    try:
        yield Served("127.0.0.1", runner.addresses[0][1], runner.server, registry)
    finally:
        await runner.cleanup()


class TestParserErrorsNeverEchoTheKey:
    @pytest.mark.parametrize(
        "raw",
        [
            b"GET /api/annotations/1/ HTTP/1.1\r\nHost: p\r\n" + AUTH + b"\x00tail\r\n\r\n",
            b"GET /api/annotations/1/ HTTP/1.1\r\nHost: p\r\n" + AUTH + b"\nX-Next: y\r\n\r\n",
            b"GET /api/annotations/1/ HTTP/1.1\r\nHost: p\r\n" + AUTH + b"\x7f\r\n\r\n",
            b"GET /api/annotations/1/ HTTP/1.1\r\nHost: p\r\n" + AUTH + b"\x01\r\n\r\n",
            b"GET /api/annotations/1/ HTTP/1.1\r\nHost: p\r\n" + AUTH + b"a" * 9000 + b"\r\n\r\n",
            b"GET /api/annotations/1/?t=" + KEY + b"\x01 HTTP/1.1\r\nHost: p\r\n\r\n",
            b"GET /api/annotations/1/?t=" + KEY + b" HTTP/1.1 junk\r\nHost: p\r\n\r\n",
            b"GET /api/annotations/1/?t=" + KEY + b"a" * 9000 + b" HTTP/1.1\r\nHost: p\r\n\r\n",
        ],
        ids=[
            "nul-after-key",
            "bare-lf-after-key",
            "del-after-key",
            "control-char-after-key",
            "overlong-authorization-header",
            "control-char-in-request-line-after-key",
            "junk-after-version",
            "overlong-request-line",
        ],
    )
    async def test_the_400_says_only_that_the_request_could_not_be_parsed(self, proxy: Proxy, raw: bytes) -> None:
        answer = await exchange(proxy, raw)
        lines, body = head_and_body(answer)
        assert lines[0].split(b" ")[1] == b"400"
        assert KEY not in answer
        assert KEY[:8] not in answer  # not even a prefix of it (aiohttp cuts long lines short)
        assert body.startswith(b"Bad request: the request could not be parsed (")
        assert proxy.fake.annotation_gets() == []


class TestHttpVersions:
    @pytest.mark.parametrize(
        "request_line",
        [b"GET /api/annotations/1/", b"GET /api/annotations/1/ HTTP/0.9", b"GET /api/annotations/1/ HTTP/2.0"],
        ids=["no-version", "http-0.9", "http-2.0"],
    )
    async def test_versions_the_parser_reads_are_refused_with_505_in_http_1_1(
        self, proxy: Proxy, request_line: bytes
    ) -> None:
        answer = await exchange(proxy, request_line + b"\r\nHost: p\r\n" + AUTH + b"\r\n\r\n")
        lines, body = head_and_body(answer)
        assert lines[0] == b"HTTP/1.1 505 HTTP Version Not Supported"
        assert header(lines, b"Connection") == b"close"
        assert header(lines, b"Content-Type") == b"application/json"
        assert error_json(body)["status_code"] == 505
        assert proxy.fake.annotation_gets() == []  # nothing reached Label Studio
        assert proxy.metric("http_requests_total", route="annotation", method="GET", status="505") == 1

    @pytest.mark.parametrize("version", [b"HTTP/3.0", b"HTTP/1.2", b"HTTP/9.9"])
    async def test_versions_the_parser_refuses_stay_400(self, proxy: Proxy, version: bytes) -> None:
        answer = await exchange(proxy, b"GET /healthz " + version + b"\r\nHost: p\r\n\r\n")
        assert head_and_body(answer)[0][0].split(b" ")[1] == b"400"

    @pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
    async def test_http_1_0_and_1_1_are_served(self, proxy: Proxy, version: bytes) -> None:
        raw = b"GET /api/annotations/1/ " + version + b"\r\nHost: p\r\n" + AUTH + b"\r\nConnection: close\r\n\r\n"
        lines, body = head_and_body(await exchange(proxy, raw))
        assert lines[0] == version + b" 200 OK"
        assert json.loads(body)["id"] == 1


class TestOddCacheControlValues:
    @pytest.mark.parametrize(
        "value",
        ["max-age=\u00b2".encode(), "min-fresh=\u00b9".encode(), "max-stale=\u00b3".encode()],
        ids=["max-age", "min-fresh", "max-stale"],
    )
    async def test_a_digit_python_reads_but_http_does_not_is_malformed_not_a_server_error(
        self, proxy: Proxy, value: bytes
    ) -> None:
        """A superscript digit (sent as UTF-8) is a digit to ``str.isdigit`` but not to ``float``: it was a 500 and
        a traceback for any key holder. delta-seconds is ASCII digits (RFC 9111 1.2.2); any other value is
        malformed, read as 0."""
        raw = b"GET /api/annotations/1/ HTTP/1.1\r\nHost: p\r\n" + AUTH + b"\r\nCache-Control: " + value
        lines, body = head_and_body(await exchange(proxy, raw + b"\r\nConnection: close\r\n\r\n"))
        assert lines[0] == b"HTTP/1.1 200 OK"
        assert json.loads(body)["id"] == 1


def webhook_head(length: int) -> bytes:
    return (
        b"POST /webhooks/label-studio HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
        b"X-Webhook-Secret: " + SECRET.encode() + b"\r\nContent-Length: %d\r\n\r\n" % length
    )


class TestRequestBodies:
    async def test_a_slow_body_is_answered_408_and_the_connection_closed(self, proxy: Proxy) -> None:
        reader, writer = await asyncio.open_connection(proxy.client.host, proxy.client.port)

        async def drip() -> None:
            # A few bytes, one every 50 ms, then nothing more (of 600): a body that never completes. The drip
            # stops well before the 0.2 s deadline, so that no byte arrives after the proxy has closed (the
            # kernel would answer it with a reset, which can discard the 408 before the test reads it).
            writer.write(webhook_head(600) + b"{")
            for _ in range(2):
                await asyncio.sleep(0.05)
                writer.write(b" ")

        dripping = asyncio.create_task(drip())
        try:
            async with asyncio.timeout(HANG_GUARD):
                answer = await reader.read()  # to EOF: the proxy must close, not linger over the rest
        finally:
            dripping.cancel()
            writer.close()
        lines, body = head_and_body(answer)
        assert lines[0] == b"HTTP/1.1 408 Request Timeout"
        assert header(lines, b"Connection") == b"close"
        assert error_json(body)["detail"] == "The request body did not arrive in time."
        assert proxy.metric("http_requests_total", route="webhook", method="POST", status="408") == 1

    async def test_a_caller_that_goes_away_mid_body_is_no_server_error(
        self, served: Served, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        _, writer = await asyncio.open_connection(served.host, served.port)
        writer.write(webhook_head(600) + b'{"action": ')
        await writer.drain()
        await wait_until(lambda: served.server.requests_count == 1)  # its headers are in: the body is awaited
        writer.close()
        await wait_until(lambda: any(r.name == "proxy.access" for r in caplog.records))  # it was answered
        assert served.requests(status="500") == 0
        assert served.requests(status="499") == 1
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert all(r.exc_info is None for r in caplog.records if not r.name.startswith("asyncio"))
        [gone] = [r for r in caplog.records if r.getMessage() == "client closed the request"]
        assert gone.levelno == logging.INFO


class TestStrictWebhookIds:
    @pytest.mark.parametrize("bad_id", [True, 1.0, "1"], ids=["true", "float", "string"])
    @pytest.mark.parametrize("kind", ["annotation_updated", "annotations_deleted", "tasks_deleted"])
    async def test_an_id_that_is_not_a_json_integer_is_invalid_and_changes_nothing(
        self, proxy: Proxy, bad_id: object, kind: str
    ) -> None:
        headers = {**proxy.auth()}
        assert (await proxy.client.get("/api/annotations/1/", headers=headers)).status == 200
        record = proxy.fake.update_annotation(1, lead_time=2.5)  # a change only an applied event would show
        event: dict[str, Any]
        if kind == "annotation_updated":
            event = annotation_event("ANNOTATION_UPDATED", record)
            event["annotation"]["id"] = bad_id
        elif kind == "annotations_deleted":
            event = annotations_deleted(1)
            event["annotations"][0]["id"] = bad_id
        else:
            event = tasks_deleted(1)
            event["tasks"][0]["id"] = bad_id
        answer = await proxy.client.post("/webhooks/label-studio", json=event, headers={"X-Webhook-Secret": SECRET})
        assert answer.status == 400
        assert error_json(await answer.read())["detail"].startswith("Malformed webhook body")
        assert proxy.metric("webhook_events_total", action="other", outcome="invalid") == 1

        gets = len(proxy.fake.annotation_gets())
        after = await proxy.client.get("/api/annotations/1/", headers=headers)
        assert after.status == 200
        assert status_of(after.headers) == "annotation-proxy; hit"
        assert json.loads(await after.read())["lead_time"] != 2.5  # the cached copy, untouched
        assert len(proxy.fake.annotation_gets()) == gets


@pytest.mark.parametrize(
    "served", [{"proxy_render_max_bytes": 64 * 1024, "proxy_max_body_bytes": 12 * 1024 * 1024}], indirect=True
)
async def test_a_caller_gone_in_the_middle_of_a_large_body_is_a_499(
    served: Served, fake_ls: FakeLabelStudio, caplog: pytest.LogCaptureFixture
) -> None:
    """A body written in parts is written inside the handler, so the edge times, counts and logs what became of
    it: a caller that reads the headers and hangs up is a 499 (nginx's "client closed request"), not a 200 logged
    before the body left, nor a 500. 8 MB: more than loopback's socket buffers hold, so the proxy is still writing
    when the caller goes."""
    fake_ls.add_annotation(result=[{"id": f"r{i}", "value": {"text": ["x" * 200]}} for i in range(36_000)])
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        reader, writer = await asyncio.open_connection(served.host, served.port)
        writer.write(b"GET /api/annotations/1/ HTTP/1.1\r\nHost: proxy\r\n" + AUTH + b"\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        await reader.readexactly(64 * 1024)  # some of the body, then gone with the rest unread
        writer.close()
        await wait_until(lambda: any(r.name == "proxy.access" for r in caplog.records), limit=30)
    [line] = [r for r in caplog.records if r.name == "proxy.access"]
    assert (line.route, line.status) == ("annotation", 499)  # type: ignore[attr-defined]
    assert served.requests(route="annotation", method="GET", status="499") == 1
    assert served.requests(route="annotation", method="GET", status="200") == 0


@pytest.mark.parametrize(
    ("path", "header", "limit", "key"),
    [
        ("/api/annotations/1/", "Accept", 2048, False),  # read before the key is checked
        ("/metrics", "Accept-Encoding", 2048, False),  # no key at all
        ("/api/annotations/1/", "Cache-Control", 2048, True),
        ("/api/annotations/1/", "Pragma", 2048, True),
        ("/api/annotations/1/", "If-None-Match", 8192, True),
    ],
)
async def test_a_list_header_past_its_bound_is_a_431(
    proxy: Proxy, path: str, header: str, limit: int, key: bool
) -> None:
    """aiohttp accepts 128 lines of 8 KiB; a megabyte of commas took the event loop 0.3 to 0.6 s to parse (every
    other caller's time, and Accept's without a client key). At the bound it is read; past it, a 431."""
    authorization = [f"Authorization: Token {CLIENT_KEY}"] if key else []

    async def send(*values: str) -> bytes:  # one line each
        sent = [f"{header}: {value}" for value in values]
        return await exchange(proxy, raw_http.request_line(path, "Connection: close", *authorization, *sent))

    half = "," * (limit // 2)
    at_the_bound = await send(half, half[1:])  # two lines, joined by one comma: `limit` characters
    assert at_the_bound.startswith(b"HTTP/1.1 ")
    assert not at_the_bound.startswith(b"HTTP/1.1 431")
    one_past = await send(half, half)
    assert one_past.startswith(b"HTTP/1.1 431")
    status, _, body = raw_http.head_of(await send(*["," * 8000] * 100))
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(body)["detail"] == f"The request's {header} header is too large (over {limit} bytes)."
    # Beyond ASCII, a character counts four: the memos keep these strings, four bytes a character (a review
    # filled them with 12 MiB of 2048-character values of four-byte characters).
    wide, quarter = "\U0001f600", limit // 4
    first, second = wide * (quarter // 2), wide * (quarter - quarter // 2 - 1)  # two lines and a comma: a quarter
    assert not (await send(first, second)).startswith(b"HTTP/1.1 431")
    assert (await send(first, second + wide)).startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize(
    ("path", "header", "key"),
    [
        ("/api/annotations/1/", "Accept", False),  # read before the key is checked
        ("/metrics", "Accept-Encoding", False),  # no key at all
        ("/api/annotations/1/", "Cache-Control", True),
    ],
)
async def test_header_values_by_the_megabyte_are_not_kept(
    make_proxy: ProxyFactory, path: str, header: str, key: bool
) -> None:
    """Content negotiation and Cache-Control are memoized by header value. Before values were bounded (the 431
    above), one value of a megabyte (128 lines of 8 KiB) each, 256 of them per memo, made 236 MiB that no budget
    counted, without a client key."""
    proxy = await make_proxy()
    authorization = [f"Authorization: Token {CLIENT_KEY}"] if key else []

    async def send(number: int) -> None:  # raw: the test client keeps every request it made until it closes
        lines = [f"{header}: x-{number}-{line}-{'a' * 8000}" for line in range(100)]  # 800 KB in all
        answer = await exchange(proxy, raw_http.request_line(path, "Connection: close", *authorization, *lines))
        assert answer.startswith(b"HTTP/1.1 ")

    await send(-1)  # whatever the first request sets up, before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(24):
            await send(number)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2**20  # without the bound: about 19 MiB, 0.8 MB a request

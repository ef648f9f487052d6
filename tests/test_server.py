"""proxy/server.py: the front door sends exactly the annotation route's requests to its handler, and what they
get is what the application's router would have given them."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web, web_protocol
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy.app import create_app
from proxy.ops_listener import ops_runner
from proxy.server import ProxyRunner, is_annotation_path
from proxy.settings import Settings
from tests.fakes.label_studio import FakeLabelStudio
from tests.support import raw_http
from tests.support.clock import Clock
from tests.support.proxies import CLIENT_KEY, ClientFactory, ProxyFactory, ProxyTestServer

PATHS = [
    "/api/annotations/1/",
    "/api/annotations/1",
    "/api/annotations/007/",
    "/api/annotations/%31/",
    "/api/annotations/1%2F2/",
    "/api/annotations/abc/",
    "/api/annotations/1/?expand=completed_by",
    "/api/annotations/1?format=json",
    "/api/annotations/",
    "/api/annotations//",
    "/api/annotations/1//",
    "/api/annotations/1/2/",
    "/api/annotations/1/x",
    "//api/annotations/1/",
    "/api/annotations",
    "/api/annotationsX/1/",
    "/api/annotations/%2F/",
    "/api/annotations/1#x",
    "/api/annotations/1/#x/y",
    "/cache/annotations/1",
    "/metrics",
]


@pytest.mark.parametrize("path", PATHS)
async def test_the_front_door_takes_exactly_the_paths_the_annotation_route_matches(path: str) -> None:
    app = create_app(Settings(label_studio_url="http://ls.invalid/", label_studio_api_key="k" * 40))
    match = await app.router.resolve(make_mocked_request("GET", path))
    routed = getattr(match.route.resource, "name", None) == "annotation"
    assert is_annotation_path(path) is routed


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/api/annotations/1/", {}),  # a miss
    ("GET", "/api/annotations/1/", {}),  # a hit
    ("HEAD", "/api/annotations/1", {}),
    ("GET", "/api/annotations/1/", {"If-None-Match": "*"}),
    ("GET", "/api/annotations/1/", {"Accept-Encoding": "gzip"}),
    ("GET", "/api/annotations/1/?expand=completed_by", {}),
    ("GET", "/api/annotations/1/?format=api", {}),
    ("GET", "/api/annotations/1/", {"Accept": "text/html"}),
    ("GET", "/api/annotations/1/", {"Authorization": "Token wrong-key-0123456789"}),
    ("GET", "/api/annotations/99/", {}),
    ("GET", "/api/annotations/%31/", {}),
    ("GET", "/api/annotations/1/", {"Cache-Control": "only-if-cached"}),
    ("POST", "/api/annotations/1/", {}),
    ("GET", "/api/annotations/1/2/", {}),
    ("GET", "/api/annotations/1/", {"Expect": "100-continue"}),  # through the application, which answers it
]


async def test_answers_through_the_front_door_are_the_applications(aiohttp_client: ClientFactory) -> None:
    """Two proxies in front of one Label Studio: one served as ``python -m proxy`` serves it, one by aiohttp's own
    AppRunner (every request through the router). The same requests get the same answers."""
    clock = Clock()
    fake = FakeLabelStudio(clock=clock)
    for _ in range(2):
        fake.add_annotation()
    upstream = TestServer(fake.app())
    await upstream.start_server()
    clients: list[TestClient] = []  # type: ignore[type-arg]
    for server in (ProxyTestServer, TestServer):
        settings = Settings(
            label_studio_url=str(upstream.make_url("/")),
            label_studio_api_key=fake.legacy_token,
            proxy_client_keys=(CLIENT_KEY,),
            redis_url=None,
        )
        app = create_app(settings, registry=CollectorRegistry(), clock=clock)
        clients.append(await aiohttp_client(server(app)))
    try:
        answers = []
        for client in clients:
            seen = []
            for method, path, headers in REQUESTS:
                url = URL(f"http://{client.host}:{client.port}{path}", encoded=True)  # sent as written
                response = await client.session.request(
                    method, url, headers={"Authorization": f"Token {CLIENT_KEY}"} | headers
                )
                body = await response.read()
                kept = {k: v for k, v in response.headers.items() if k not in ("Date", "X-Request-ID")}
                if response.content_type == "application/json" and response.status >= 400:
                    body = b""  # error bodies carry a fresh uuid
                seen.append((method, path, response.status, kept, body))
            answers.append(seen)
        front, application = answers
        for ours, theirs in zip(front, application, strict=True):
            assert ours == theirs
        assert [status for _, _, status, _, _ in front] == [
            200, 200, 200, 304, 200, 200, 404, 406, 401, 404, 404, 200, 405, 404, 200
        ]  # fmt: skip
    finally:
        await upstream.close()


async def raw_exchange(host: str, port: int, request: bytes) -> tuple[bytes, bytes]:
    """One request written as it is; the status line and headers, and the body."""
    head, _, body = (await raw_http.exchange(host, port, request)).partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("target", [b"*", b"host:443", b"http://proxy"])
async def test_a_target_no_route_can_match_is_the_edges_404(make_proxy: ProxyFactory, target: bytes) -> None:
    """Not a path: aiohttp's router raises before any handler; the front door answers it through the edge."""
    proxy = await make_proxy()
    method = b"CONNECT" if target == b"host:443" else b"OPTIONS" if target == b"*" else b"GET"
    head, body = await raw_exchange(
        proxy.client.host,
        proxy.client.port,
        method + b" " + target + b" HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 404")
    assert b"X-Request-ID: " in head
    assert b"Cache-Control: no-store" in head
    assert json.loads(body)["detail"] == "Not found."
    method_label = "CONNECT" if method == b"CONNECT" else method.decode()
    assert proxy.metric("http_requests_total", route="unmatched", method=method_label, status="404") == 1


@pytest.mark.parametrize("path", [b"/api/annotations/1/", b"/healthz"])
async def test_an_expectation_the_proxy_cannot_meet_is_the_edges_417(
    make_proxy: ProxyFactory, path: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's application refuses an ``Expect`` other than 100-continue before any handler, with a plain-text
    417; the front door has the edge answer it, as every other error: Label Studio's shape, a request id,
    no-store, counted and logged."""
    proxy = await make_proxy()
    caplog.set_level(logging.INFO, logger="proxy.access")
    head, body = await raw_exchange(
        proxy.client.host,
        proxy.client.port,
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: proxy\r\nExpect: something\r\nConnection: close\r\nAuthorization: Token "
        + CLIENT_KEY.encode()
        + b"\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 417")
    assert b"X-Request-ID: " in head
    assert b"Cache-Control: no-store" in head
    error = json.loads(body)
    assert (error["status_code"], error["detail"]) == (417, "Expectation Failed")
    assert proxy.metric("http_requests_total", route="unmatched", method="GET", status="417") == 1
    [line] = [record for record in caplog.records if record.name == "proxy.access"]
    assert (line.route, line.status, line.path) == ("unmatched", 417, path.decode())  # type: ignore[attr-defined]


async def test_a_fragment_in_the_request_target_is_not_part_of_the_id(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    head, body = await raw_exchange(
        proxy.client.host,
        proxy.client.port,
        b"GET /api/annotations/1#x HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\nAuthorization: Token "
        + CLIENT_KEY.encode()
        + b"\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["id"] == 1


async def test_idle_connections_are_closed_after_75_seconds_as_run_app_did(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    assert (await proxy.client.get("/healthz")).status == 200
    runner = proxy.client.server.runner
    assert runner is not None
    assert runner.server is not None
    [connection] = runner.server.connections
    assert connection.keepalive_timeout == 75.0  # aiohttp's own server default is 3630


async def test_the_operations_listener_closes_idle_connections_and_answers_any_target_like_the_main_one(
    make_proxy: ProxyFactory,
) -> None:
    """PROXY_METRICS_PORT's listener runs on the same runner: an idle connection held for run_app's 75 s, not
    aiohttp's hour, and ``OPTIONS *`` and an unmet ``Expect`` answered by the edge (JSON with a request id), not
    aiohttp's text."""
    proxy = await make_proxy()
    runner = ops_runner(proxy.client.app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        head, body = await raw_exchange(
            "127.0.0.1", port, b"OPTIONS * HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 404")
        assert b"X-Request-ID: " in head
        assert json.loads(body)["detail"] == "Not found."
        head, body = await raw_exchange(
            "127.0.0.1", port, b"GET /metrics HTTP/1.1\r\nHost: proxy\r\nExpect: x\r\nConnection: close\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 417")
        assert b"X-Request-ID: " in head
        assert json.loads(body)["status_code"] == 417
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
            assert runner.server is not None
            assert runner.server.connections  # this session's, at least
            assert all(connection.keepalive_timeout == 75.0 for connection in runner.server.connections)
    finally:
        await runner.cleanup()


async def drain_waits(runner: web.AppRunner, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits aiohttp asks for when ``runner`` shuts down with a request held (recorded, not waited out)."""
    waits: list[float] = []
    real = web_protocol.ceil_timeout

    def recorded(delay: float | None, ceil_threshold: float = 5) -> Any:
        assert delay is not None
        waits.append(delay)
        return real(0.001)

    monkeypatch.setattr(web_protocol, "ceil_timeout", recorded)
    entered = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    runner.app.router.add_get("/held", held)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.get(f"http://{host}:{port}/held"))
        await entered.wait()
        await runner.cleanup()
        with pytest.raises(aiohttp.ClientError):
            await request
    assert len(waits) == 2  # before and after cancelling what the request reads
    return waits


def longest(waits: list[float]) -> float:
    """How long ``waits`` may take: a wait over 5 s ends at the next whole second of the loop's clock."""
    return sum(wait + (1 if wait > 5 else 0) for wait in waits)


@pytest.mark.parametrize("drain", [0.4, 10.0, 12.0, 30.0])
async def test_requests_in_flight_at_shutdown_get_the_drain_and_no_more(
    monkeypatch: pytest.MonkeyPatch, drain: float
) -> None:
    """aiohttp waits for requests in flight twice (before and after cancelling what they read), each wait over
    5 s ending at the next whole second: given PROXY_SHUTDOWN_TIMEOUT itself, shutting down took up to twice as
    long, past the orchestrator's grace period."""

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", not_found, name="unmatched")  # what the runner's door asks every app for
    assert longest(await drain_waits(ProxyRunner(app, annotations=False, drain=drain), monkeypatch)) <= drain


async def test_the_operations_listener_drains_within_a_second(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It stops after the main listener has drained: aiohttp's default of 60 s a wait added up to two minutes."""
    proxy = await make_proxy()
    assert longest(await drain_waits(ops_runner(proxy.client.app), monkeypatch)) <= 1.0

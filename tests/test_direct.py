"""proxy/direct.py: a hit written straight to the socket is the answer aiohttp would have written, pipelined
answers keep their order, and a caller that stops reading cannot make the proxy buffer its answers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.direct import REQUEST_ID_HEADER, WRITE_BUFFER_LIMIT, DirectResponse, can_answer_directly
from tests.support import raw_http
from tests.support.proxies import CLIENT_KEY, ProxyFactory
from tests.support.raw_http import answers, framed, request_line

HEADERS = {
    "Cache-Status": "annotation-proxy; hit; ttl=299",
    "Cache-Control": "private, no-cache",
    "Vary": "Accept-Encoding",
    "Age": "3",
    "ETag": 'W/"0123456789abcdef"',
    "Content-Type": "application/json",
}
BODY = b'{"id": 1, "result": []}'
KERNEL_SEND_BUFFER_MAX = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])  # bytes, per socket


async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> TestServer:
    app = web.Application()
    app.router.add_get("/{status}", handler)
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.mark.parametrize("status", [200, 304])
async def test_a_direct_answer_is_byte_for_byte_the_one_aiohttp_writes(status: int) -> None:
    """The same headers and body through aiohttp's ``Response`` and through a :class:`DirectResponse`: the same
    status line, the same header lines in the same order (``Date`` aside, formatted alike), the same body."""
    now = time.time()

    async def handler(request: web.Request) -> web.StreamResponse:
        direct = request.query.get("direct") == "1"
        assert can_answer_directly(request) or not direct  # a keep-alive GET over HTTP/1.1
        body = BODY if status == 200 else b""
        if direct:
            return DirectResponse(status=status, body=body, headers=dict(HEADERS), now=now)
        return web.Response(status=status, body=body or None, headers=dict(HEADERS))

    server = await serve(handler)
    try:
        seen = []
        for direct in ("1", "0"):
            stream = await raw_http.exchange(
                server.host,
                server.port,
                request_line(f"/{status}?direct={direct}") + request_line("/404", "Connection: close"),
            )
            first, _closing = answers(stream)
            seen.append(first)
    finally:
        await server.close()
    (direct_status, direct_headers, direct_body), (status_line, headers, body) = seen
    assert direct_status == status_line
    assert list(direct_headers) == list(headers)  # names, order and case
    dates = [parsedate_to_datetime(h.pop(b"Date").decode()) for h in (direct_headers, headers)]
    assert abs((dates[0] - dates[1]).total_seconds()) <= 1
    assert direct_headers == headers
    assert direct_body == body


@pytest.mark.parametrize(
    "value", ["a\r\nSet-Cookie: b", "a\nSet-Cookie: b", "a\rb", "a\x00Set-Cookie: b", "a\x7f\x1bb"]
)
async def test_a_header_with_a_control_character_is_refused_as_aiohttp_refuses_it(value: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return DirectResponse(status=200, body=BODY, headers={"X-Evil": value}, now=time.time())

    server = await serve(handler)
    try:
        stream = await raw_http.exchange(server.host, server.port, request_line("/200"))
    finally:
        await server.close()
    assert b"X-Evil" not in stream
    assert not stream.startswith(b"HTTP/1.1 200")


async def test_a_tab_and_non_ascii_in_a_header_are_sent_as_utf_8() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/404":  # the last request, which closes the connection
            return web.Response(status=404)
        return DirectResponse(status=200, body=BODY, headers={"X-Fine": "a\tb \u00e9\u0085"}, now=time.time())

    server = await serve(handler)
    try:
        stream = await raw_http.exchange(
            server.host, server.port, request_line("/200") + request_line("/404", "Connection: close")
        )
    finally:
        await server.close()
    assert stream.startswith(b"HTTP/1.1 200")
    assert "X-Fine: a\tb \u00e9\u0085\r\n".encode() in stream


async def test_a_handlers_own_date_and_server_are_sent_as_aiohttp_sends_them() -> None:
    own = {"Content-Type": "application/json", "Date": "Thu, 01 Jan 1970 00:00:00 GMT", "Server": "the handler's"}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("direct") == "1":
            return DirectResponse(status=200, body=BODY, headers=dict(own), now=time.time())
        return web.Response(status=200, body=BODY, headers=dict(own))

    server = await serve(handler)
    try:
        heads = []
        for direct in ("1", "0"):
            raw = request_line(f"/200?direct={direct}") + request_line("/404", "Connection: close")
            (_, lines, _), _closing = framed(await raw_http.exchange(server.host, server.port, raw))
            heads.append(lines)
    finally:
        await server.close()
    assert heads[0] == heads[1]
    sent = [(name.decode(), value.decode()) for name, value in heads[0]]
    assert [header for header in sent if header[0] != "Content-Length"] == list(own.items())


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[DirectResponse]:
    """Every DirectResponse the proxy writes during the test, in order."""
    prepared: list[DirectResponse] = []
    prepare = DirectResponse.prepare

    async def counted(self: DirectResponse, request: web.BaseRequest) -> None:
        prepared.append(self)
        await prepare(self, request)

    monkeypatch.setattr(DirectResponse, "prepare", counted)
    return prepared


@pytest.mark.parametrize("asked_before", [1, 2], ids=["read from the store", "a kept answer"])
async def test_a_hit_is_answered_directly_with_the_headers_aiohttp_would_send(
    make_proxy: ProxyFactory, written: list[DirectResponse], asked_before: int
) -> None:
    """Through the proxy, edge included: a keep-alive hit is written by a DirectResponse, and its head is the one
    aiohttp writes for the same hit asked with ``Connection: close`` (which aiohttp's own Response answers),
    header for header and in the same order, less ``Connection: close`` itself. Asked once before, the hit is
    read from the store and built afresh; asked twice, the hot tier holds it and its answer is kept
    (proxy/answers.py), its head serialized once and the edge's request id written into it."""
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    auth = f"Authorization: Token {CLIENT_KEY}"
    for _ in range(asked_before):
        assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    written.clear()
    stream = await raw_http.exchange(
        proxy.client.host,
        proxy.client.port,
        request_line("/api/annotations/1/", auth) + request_line("/api/annotations/1/", auth, "Connection: close"),
    )
    assert len(written) == 1  # the first; the second is aiohttp's
    assert written[0].has_fixed_head is (asked_before == 2)
    direct, closing = framed(stream)
    varying = {b"Date", b"X-Request-ID", b"Age", b"Cache-Status", b"Connection"}
    assert direct[0] == closing[0] == b"HTTP/1.1 200 OK"
    assert [name for name, _ in direct[1]] == [name for name, _ in closing[1] if name != b"Connection"]
    assert [h for h in direct[1] if h[0] not in varying] == [h for h in closing[1] if h[0] not in varying]
    assert (b"Connection", b"close") in closing[1]
    request_ids = [value for head in (direct[1], closing[1]) for name, value in head if name == b"X-Request-ID"]
    assert len(request_ids) == 2  # one each
    assert request_ids[0] != request_ids[1]  # its own


async def test_pipelined_hits_are_answered_in_order_and_connection_close_is_honoured(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy()
    for _ in range(3):
        proxy.fake.add_annotation()
    auth = f"Authorization: Token {CLIENT_KEY}"
    for annotation_id in (1, 2, 3):  # cached: the pipelined requests are hits
        assert (await proxy.client.get(f"/api/annotations/{annotation_id}/", headers=proxy.auth())).status == 200
    order = [2, 1, 3, 2]
    raw = b"".join(request_line(f"/api/annotations/{i}/", auth) for i in order)
    stream = await raw_http.exchange(
        proxy.client.host, proxy.client.port, raw + request_line("/api/annotations/1/", auth, "Connection: close")
    )
    got = answers(stream)  # read until the proxy closed the connection, as the last request asked
    assert [json.loads(body)["id"] for _, _, body in got] == [*order, 1]
    assert all(status == b"HTTP/1.1 200 OK" for status, _, _ in got)
    assert all(b"hit" in headers[b"Cache-Status"] for _, headers, _ in got)
    assert [headers.get(b"Connection") for _, headers, _ in got] == [None] * len(order) + [b"close"]
    assert len({headers[b"X-Request-ID"] for _, headers, _ in got}) == len(got)


async def test_a_caller_that_stops_reading_holds_at_most_one_answer_beyond_the_write_limit(
    make_proxy: ProxyFactory,
) -> None:
    """A caller pipelines requests for a 100 KB annotation and reads nothing. Once the kernel's buffers are full,
    the proxy's own buffer for that connection stays within the limit and one answer; written straight to the
    socket regardless, it would have grown to every answer asked (20 MB or more)."""
    proxy = await make_proxy()
    text = "x" * 100_000
    proxy.fake.add_annotation(result=[{"from_name": "t", "to_name": "t", "type": "textarea", "value": {"text": text}}])
    first = await proxy.client.get("/api/annotations/1/", headers=proxy.auth())
    size = len(await first.read())
    # More answers than the kernel's socket buffers can take, whatever this machine's TCP settings.
    asked = max(200, 2 * KERNEL_SEND_BUFFER_MAX // size)
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the caller's kernel takes little
    client.setblocking(False)
    await loop.sock_connect(client, (proxy.client.host, proxy.client.port))
    try:
        auth = f"Authorization: Token {CLIENT_KEY}"
        await loop.sock_sendall(client, request_line("/api/annotations/1/", auth) * asked)
        server = proxy.client.server.runner.server  # type: ignore[union-attr]
        assert server is not None

        def answered() -> float:
            return proxy.metric("http_requests_total", route="annotation", method="GET", status="200")

        peak, settled, last = 0, 0, -1.0
        while settled < 50 and answered() < asked + 1:  # until nothing more is answered for a while
            await asyncio.sleep(0.01)
            buffered = [c.transport.get_write_buffer_size() for c in server.connections if c.transport]
            peak = max([peak, *buffered])
            settled = settled + 1 if answered() == last else 0
            last = answered()
        assert answered() < asked + 1  # the proxy waits for the caller
        assert peak <= WRITE_BUFFER_LIMIT + size + 4096  # the limit, one answer and its head
        # The caller reads again, and asks the proxy to close after one more: every answer arrives whole, in order.
        await loop.sock_sendall(client, request_line("/api/annotations/1/", auth, "Connection: close"))
        received = bytearray()
        async with asyncio.timeout(raw_http.HANG_GUARD):
            while chunk := await loop.sock_recv(client, 1 << 20):
                received += chunk
    finally:
        client.close()
    got = answers(bytes(received))
    assert len(got) == asked + 1
    assert all(len(body) == size for _, _, body in got)


async def test_a_kept_answer_carries_each_request_s_own_id(
    make_proxy: ProxyFactory, written: list[DirectResponse]
) -> None:
    """A kept answer (proxy/answers.py) is written again for every hit of its version, each time with its own
    request's id: the caller's ``X-Request-ID`` when it sent a plain one, else a new one."""
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    for _ in range(2):  # a miss, then a hit read from the store: the hot tier holds it from then on
        assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    written.clear()
    ids = []
    for caller_id in ("caller-1", "caller-2", None, "caller-3", None):
        headers = proxy.auth() | ({REQUEST_ID_HEADER: caller_id} if caller_id else {})
        response = await proxy.client.get("/api/annotations/1/", headers=headers)
        assert response.status == 200
        ids.append(response.headers.getall(REQUEST_ID_HEADER))
    assert [written_one.has_fixed_head for written_one in written] == [True] * 5  # kept answers, all of them
    assert ids[0] == ["caller-1"]
    assert ids[1] == ["caller-2"]
    assert ids[3] == ["caller-3"]
    assert len(ids[2]) == len(ids[4]) == 1
    assert ids[2] != ids[4]
    assert len(set(map(tuple, ids))) == 5  # each request's own

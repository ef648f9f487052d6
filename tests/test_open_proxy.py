"""No open proxy: whatever a caller puts in the request line or headers, only ``GET /api/annotations/<id>/`` (with at
most ``?expand=completed_by``) ever reaches Label Studio, and always Label Studio at ``LABEL_STUDIO_URL``.

Every request here is written byte for byte on a plain socket (no client normalises it first). What aiohttp's
HTTP parser refuses it answers 400 itself, before any handler runs. The basic traversal and encoded-slash paths
are in tests/test_proxy.py (TestCallers); these are the cases it leaves out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from tests.fakes.label_studio import CHECK_PATH, FakeLabelStudio
from tests.support import raw_http
from tests.support.proxies import CLIENT_KEY, Proxy, ProxyFactory, ServerFactory

AUTH = f"Authorization: Token {CLIENT_KEY}\r\n".encode()
STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3}) ")
MAX_LINE = 8190  # aiohttp's default bound on the request line and on each header line
MAX_HEADERS = 128  # aiohttp's default bound on the number of header lines


@dataclass(frozen=True)
class Arrival:
    """A request as it reached Label Studio: the request target as sent, and the Host it was addressed to."""

    method: str
    target: str  # path and query string, still percent-encoded
    host: str


@pytest.fixture
def arrivals() -> list[Arrival]:
    return []


@pytest.fixture
async def upstream(aiohttp_server: ServerFactory, fake_ls: FakeLabelStudio, arrivals: list[Arrival]) -> TestServer:
    """The fake Label Studio, also recording each raw request target (the fake keeps the query only as a dict)."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.raw_path.endswith(CHECK_PATH):  # the proxy's own dependency checks, not a caller's
            arrivals.append(Arrival(request.method, request.raw_path, request.headers.get("Host", "")))
        return await handler(request)

    app = fake_ls.app()
    app.middlewares.insert(0, record)
    return await aiohttp_server(app)


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> Proxy:
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    proxy.fake.add_annotation()
    return proxy


async def exchange(proxy: Proxy, raw: bytes) -> bytes:
    """Write ``raw`` to the proxy and read until it closes the connection."""
    return await raw_http.exchange(proxy.client.host, proxy.client.port, raw)


def request(line: bytes, *headers: bytes, host: bytes | None = b"proxy.internal") -> bytes:
    """One request with the client key, closing the connection after the answer. ``host=None``: no Host."""
    lines = [line, *([b"Host: " + host] if host is not None else []), *headers]
    return b"\r\n".join(lines) + b"\r\n" + AUTH + b"Connection: close\r\n\r\n"


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in STATUS_LINE.findall(answer)]


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def upstream_host(proxy: Proxy) -> str:
    return f"{proxy.upstream.host}:{proxy.upstream.port}"


class TestHost:
    @pytest.mark.parametrize(
        "host",
        [
            b"",
            b"evil.example",
            b"evil.example:8443",
            b"10.0.0.1",
            b"[::1]:9",
            b"127.0.0.1:1",
            b"evil.example@proxy.internal",
            b"a" * (MAX_LINE - 100),
        ],
        ids=["empty", "other-host", "other-host-with-port", "ip", "ipv6", "loopback-port", "userinfo", "very-long"],
    )
    async def test_the_host_header_never_chooses_where_the_request_goes(
        self, proxy: Proxy, arrivals: list[Arrival], host: bytes
    ) -> None:
        answer = await exchange(proxy, request(b"GET /api/annotations/1/ HTTP/1.1", host=host))
        assert statuses(answer) == [200]
        assert json.loads(body_of(answer))["id"] == 1
        assert arrivals == [Arrival("GET", "/api/annotations/1/", upstream_host(proxy))]

    async def test_no_host_at_all_is_served_from_label_studio_url(self, proxy: Proxy, arrivals: list[Arrival]) -> None:
        answer = await exchange(proxy, request(b"GET /api/annotations/1/ HTTP/1.0", host=None))
        assert statuses(answer) == [200]
        assert arrivals == [Arrival("GET", "/api/annotations/1/", upstream_host(proxy))]

    async def test_two_host_headers_are_refused(self, proxy: Proxy, arrivals: list[Arrival]) -> None:
        answer = await exchange(proxy, request(b"GET /api/annotations/1/ HTTP/1.1", b"Host: evil.example"))
        assert statuses(answer) == [400]
        assert arrivals == []

    @pytest.mark.parametrize(
        "header",
        [
            b"X-Forwarded-Host: evil.example",
            b"Forwarded: host=evil.example;proto=https",
            b"X-Forwarded-Proto: https",
            b"X-Original-URL: /api/users/",
            b"X-Rewrite-URL: /api/token/refresh/",
            b"X-HTTP-Method-Override: DELETE",
        ],
    )
    async def test_routing_headers_are_ignored_and_not_passed_on(
        self, proxy: Proxy, arrivals: list[Arrival], header: bytes
    ) -> None:
        answer = await exchange(proxy, request(b"GET /api/annotations/1/ HTTP/1.1", header))
        assert statuses(answer) == [200]
        assert arrivals == [Arrival("GET", "/api/annotations/1/", upstream_host(proxy))]
        name = header.partition(b":")[0].decode().lower()
        (sent,) = proxy.fake.annotation_gets(1)
        assert name not in {key.lower() for key in sent.headers}


class TestOverlong:
    async def test_a_path_past_the_line_limit_is_400_from_the_parser(
        self, proxy: Proxy, arrivals: list[Arrival]
    ) -> None:
        answer = await exchange(proxy, request(b"GET /api/annotations/" + b"1" * MAX_LINE + b"/ HTTP/1.1"))
        assert statuses(answer) == [400]
        assert arrivals == []

    async def test_a_long_id_within_the_limit_is_404_from_the_proxy(
        self, proxy: Proxy, arrivals: list[Arrival]
    ) -> None:
        answer = await exchange(proxy, request(b"GET /api/annotations/" + b"0" * 7000 + b"1" * 900 + b"/ HTTP/1.1"))
        assert statuses(answer) == [404]
        assert json.loads(body_of(answer))["detail"] == "No Annotation matches the given query."
        assert arrivals == []

    async def test_leading_zeros_within_the_limit_still_name_the_id(
        self, proxy: Proxy, arrivals: list[Arrival]
    ) -> None:
        answer = await exchange(proxy, request(b"GET /api/annotations/" + b"0" * 8000 + b"2/ HTTP/1.1"))
        assert statuses(answer) == [200]
        assert arrivals == [Arrival("GET", "/api/annotations/2/", upstream_host(proxy))]

    @pytest.mark.parametrize(
        "headers",
        [
            [b"X-Long: " + b"v" * (MAX_LINE + 10)],
            [b"Authorization-Extra: " + b"v" * (MAX_LINE + 10)],
            [b"X-Many-%d: v" % i for i in range(MAX_HEADERS)],
        ],
        ids=["one-long-header", "long-header-after-auth", "too-many-headers"],
    )
    async def test_overlong_headers_are_400_from_the_parser(
        self, proxy: Proxy, arrivals: list[Arrival], headers: list[bytes]
    ) -> None:
        answer = await exchange(proxy, request(b"GET /api/annotations/1/ HTTP/1.1", *headers))
        assert statuses(answer) == [400]
        assert arrivals == []

    async def test_headers_up_to_the_bounds_are_served_and_none_goes_upstream(
        self, proxy: Proxy, arrivals: list[Arrival]
    ) -> None:
        # Nearly 1 MiB of headers: as many as aiohttp takes, each as long as it takes.
        headers = [b"X-Big-%03d: %s" % (i, b"v" * (MAX_LINE - 20)) for i in range(MAX_HEADERS - 4)]
        answer = await exchange(proxy, request(b"GET /api/annotations/1/ HTTP/1.1", *headers))
        assert statuses(answer) == [200]
        assert arrivals == [Arrival("GET", "/api/annotations/1/", upstream_host(proxy))]
        (sent,) = proxy.fake.annotation_gets(1)
        assert not any(name.lower().startswith("x-big") for name in sent.headers)


class TestQuery:
    @pytest.mark.parametrize(
        ("query", "forwarded"),
        [
            ("expand=completed_by&page=2", "expand=completed_by"),
            ("page=2&expand=completed_by", "expand=completed_by"),
            ("id=2", ""),
            ("pk=2&id=2&annotation=2", ""),
            ("expand=completed_by%26token%3Dx", ""),
            ("expand=completed_by%26id%3D2", ""),
            ("format=json&fields=id", ""),  # another format is a 404, as Label Studio (test_http_caching.py)
            ("expand=completed_by&expand=completed_by", "expand=completed_by"),
            ("expand=completed_by&expand=task", "expand=completed_by"),
            ("expand=completed_by,task", "expand=completed_by"),
            ("expand=*", ""),
            ("expand=~all", ""),
            ("expand=task", ""),
            ("expand=completed_by;page=2", ""),
            ("expand=completed_by%00", ""),
            ("expand=completed_by%0D%0AX-Injected:%20yes", ""),
            ("expand=completed_by&x=%0D%0AX-Injected:%20yes", "expand=completed_by"),
            ("%65xpand=completed_by", "expand=completed_by"),
            ("token=abc&access_token=def&api_key=ghi", ""),
            ("next=http://evil.example/&url=http://evil.example/", ""),
            ("", ""),
            ("&&&=&", ""),
        ],
    )
    async def test_only_expand_completed_by_reaches_label_studio(
        self, proxy: Proxy, arrivals: list[Arrival], query: str, forwarded: str
    ) -> None:
        line = f"GET /api/annotations/1/?{query} HTTP/1.1".encode()
        answer = await exchange(proxy, request(line))
        assert statuses(answer) == [200]
        expected = "/api/annotations/1/" + (f"?{forwarded}" if forwarded else "")
        assert arrivals == [Arrival("GET", expected, upstream_host(proxy))]
        (sent,) = proxy.fake.annotation_gets(1)
        assert sent.query == ({"expand": "completed_by"} if forwarded else {})
        assert not any("injected" in name.lower() for name in sent.headers)


class TestRequestTargets:
    @pytest.mark.parametrize(
        ("target", "annotation_id"),
        [
            (b"http://evil.example/api/annotations/1/", 1),
            (b"https://evil.example:8443/api/annotations/2", 2),
            (b"http://user:pass@evil.example/api/annotations/1/", 1),
            (b"http://127.0.0.1:1/api/annotations/2/", 2),
            (b"ftp://evil.example/api/annotations/1/", 1),
        ],
    )
    async def test_an_absolute_uri_for_another_host_is_served_from_label_studio_url(
        self, proxy: Proxy, arrivals: list[Arrival], target: bytes, annotation_id: int
    ) -> None:
        answer = await exchange(proxy, request(b"GET " + target + b" HTTP/1.1", host=b"evil.example"))
        assert statuses(answer) == [200]
        assert json.loads(body_of(answer))["id"] == annotation_id
        assert arrivals == [Arrival("GET", f"/api/annotations/{annotation_id}/", upstream_host(proxy))]

    @pytest.mark.parametrize(
        "target",
        [
            b"http://evil.example/api/users/",
            b"http://evil.example/api/token/refresh/",
            b"http://evil.example/",
            b"http://evil.example",
            b"http://evil.example/api/annotations/1/../../users/",
            b"evil.example:80",
            b"*",
        ],
    )
    async def test_any_other_request_target_never_reaches_label_studio(
        self, proxy: Proxy, arrivals: list[Arrival], target: bytes
    ) -> None:
        answer = await exchange(proxy, request(b"GET " + target + b" HTTP/1.1", host=b"evil.example"))
        (status,) = statuses(answer)
        assert status in (400, 404)
        assert arrivals == []

    @pytest.mark.parametrize(
        "authority", [b"evil.example:443", b"127.0.0.1:{port}", b"localhost:{port}", b"127.0.0.1:6379"]
    )
    async def test_connect_opens_no_tunnel(self, proxy: Proxy, arrivals: list[Arrival], authority: bytes) -> None:
        authority = authority.replace(b"{port}", str(proxy.upstream.port).encode())
        answer = await exchange(proxy, request(b"CONNECT " + authority + b" HTTP/1.1", host=authority))
        (status,) = statuses(answer)
        assert status in (400, 404, 405)
        assert arrivals == []

    @pytest.mark.parametrize(
        "path",
        [
            b"/api/annotations/../users/",
            b"/api/annotations/1/../../users/",
            b"/api/annotations/1/../../../api/token/refresh/",
            b"/api/annotations/1/../2/",
            b"/api/annotations/./1/",
            b"/api/annotations/1/./",
            b"/api/x/../annotations/1/",
            b"/../api/annotations/1/",
            b"/./api/annotations/1/",
            b"/api/annotations/.%2e/users/",
            b"/api/annotations/%2e%2e%2fusers/",
            b"/api/annotations/%252e%252e%252fusers/",
            b"/api/annotations/..%5cusers/",
            b"/api/annotations/1\\..\\..\\users/",
            b"/api/annotations/1/..;/users/",
            b"/api/annotations/1%2f..%2f2/",
            b"/api/annotations//1/",
            b"/api//annotations/1/",
            b"/API/annotations/1/",
        ],
    )
    async def test_dot_segments_are_never_resolved_into_another_path(
        self, proxy: Proxy, arrivals: list[Arrival], path: bytes
    ) -> None:
        answer = await exchange(proxy, request(b"GET " + path + b" HTTP/1.1"))
        (status,) = statuses(answer)
        assert status in (400, 404)
        assert arrivals == []


class TestFraming:
    """A second request hidden in the first one's framing is only ever its own request, routed like any other."""

    async def test_a_pipelined_request_is_routed_on_its_own(self, proxy: Proxy, arrivals: list[Arrival]) -> None:
        first = b"GET /api/annotations/1/ HTTP/1.1\r\nHost: proxy.internal\r\n" + AUTH + b"\r\n"
        answer = await exchange(proxy, first + request(b"GET /api/users/ HTTP/1.1"))
        assert statuses(answer) == [200, 404]
        assert [a.target for a in arrivals] == ["/api/annotations/1/"]

    async def test_a_request_in_a_get_body_is_never_forwarded(self, proxy: Proxy, arrivals: list[Arrival]) -> None:
        hidden = b"GET /api/users/ HTTP/1.1\r\nHost: proxy.internal\r\n\r\n"
        smuggling = (
            b"GET /api/annotations/1/ HTTP/1.1\r\nHost: proxy.internal\r\n" + AUTH + b"Connection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(hidden)
        )
        answer = await exchange(proxy, smuggling + hidden)
        assert statuses(answer) == [200]
        assert [a.target for a in arrivals] == ["/api/annotations/1/"]

    async def test_conflicting_lengths_are_refused(self, proxy: Proxy, arrivals: list[Arrival]) -> None:
        smuggling = (
            b"GET /api/annotations/1/ HTTP/1.1\r\nHost: proxy.internal\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n"
            b"Content-Length: 4\r\n\r\n0\r\n\r\n" + request(b"GET /api/users/ HTTP/1.1")
        )
        answer = await exchange(proxy, smuggling)
        assert statuses(answer) == [400]
        assert arrivals == []

    @pytest.mark.parametrize("path", [b"/api/annotations/1/", b"/api/users/"])
    async def test_a_request_line_without_a_version_is_refused(
        self, proxy: Proxy, arrivals: list[Arrival], path: bytes
    ) -> None:
        # aiohttp reads "GET <path>" as HTTP/0.9 and still parses the header lines that follow; the proxy answers
        # 505 (tests/test_http_hardening.py) and forwards nothing.
        answer = await exchange(proxy, b"GET " + path + b"\r\n" + AUTH + b"\r\n")
        assert statuses(answer) == [505]
        assert arrivals == []


class TestLabelStudioUrl:
    @pytest.mark.parametrize(
        ("path", "prefix"),
        [("/", ""), ("/ls", "/ls"), ("/label%20studio/", "/label%20studio"), ("/a/b/", "/a/b")],
    )
    async def test_requests_go_below_its_path_as_configured(
        self, make_proxy: ProxyFactory, upstream: TestServer, arrivals: list[Arrival], path: str, prefix: str
    ) -> None:
        """Label Studio behind a path of its own (a shared ingress): every annotation request goes below it."""
        proxy = await make_proxy(label_studio_url=str(upstream.make_url(path)))
        proxy.fake.add_annotation()  # found at "/" only: elsewhere the fake answers a 404 of its own (a 502 here)
        for query in ("", "?expand=completed_by"):
            await exchange(proxy, request(f"GET /api/annotations/1/{query} HTTP/1.1".encode()))
        assert [arrival.target for arrival in arrivals] == [
            f"{prefix}/api/annotations/1/",
            f"{prefix}/api/annotations/1/?expand=completed_by",
        ]

"""A small response written straight to the caller's socket, its head serialized in one string.

aiohttp's ``Response`` spends most of a cache hit's own cost on the way out: a header dictionary merged with
defaults, the head serialized, a payload writer per request, a drain (docs/performance-log.md). A hit's answer
needs none of it: a status line, the handler's headers, ``Date`` and ``Server``, and bytes that are already
rendered. :class:`DirectResponse` is a ``web.StreamResponse`` whose ``prepare`` writes exactly that to
``request.transport`` in one call, with the same headers aiohttp would send for the same response.

Only what it can answer alike is sent this way (:func:`can_answer_directly`): ``GET`` over HTTP/1.1 with the
connection kept alive, on a socket whose write buffer is not already behind. Everything else, and a caller that
has stopped reading, gets aiohttp's own ``Response``, whose write waits for the socket: so a caller that sends
requests without reading the answers holds at most one body beyond the transport's high-water mark.

An answer that many requests share (proxy/answers.py) is serialized once: its header lines come as ``fixed``,
the ones before the response's own ``headers`` (``Cache-Control`` among them) and the ones after,
``Content-Length``, ``Date`` and ``Server`` as :func:`trailer` gives them. Such a response takes the edge's
request id as :attr:`DirectResponse.request_id`, written between the two parts of ``fixed``, rather than in
``headers``: on a real socket, the edge's two header operations and serializing the response's own headers
per request cost a hot hit 4% and 7% (docs/performance-log.md, the tenth round).
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import formatdate

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

# Beyond this many bytes waiting in the caller's socket buffer, answers go through aiohttp's writer, which waits
# for the caller to read (asyncio's default high-water mark of a transport's write buffer).
WRITE_BUFFER_LIMIT = 64 * 1024
STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 304: b"HTTP/1.1 304 Not Modified\r\n"}
# The edge's header on every response (proxy/edge.py), here because a response with a fixed head writes it itself.
REQUEST_ID_HEADER = "X-Request-ID"
# What aiohttp refuses in a header name or value: every control character but tab.
CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])


def header_lines(headers: Mapping[str, str]) -> bytes:
    """``Name: value\\r\\n`` for each header, in order; ``ValueError`` for a control character (tab aside) in a
    name or value, as aiohttp refuses it."""
    parts: list[str] = []
    for name, value in headers.items():
        parts += (name, ": ", value, "\r\n")
    lines = "".join(parts).encode()
    # Two control bytes a header, its line's CR LF: any more came in a name or a value.
    if len(lines) - len(lines.translate(None, CONTROLS)) != len(parts) // 2:
        raise ValueError("a header name or value contains a control character")
    return lines


def trailer(status: int, body_length: int, now: float) -> dict[str, str]:
    """The headers aiohttp adds after a response's own: ``Content-Length`` (on a 200), ``Date`` and ``Server``."""
    headers: dict[str, str] = {hdrs.CONTENT_LENGTH: str(body_length)} if status == 200 else {}
    headers[hdrs.DATE] = http_date(now)
    headers[hdrs.SERVER] = SERVER_SOFTWARE
    return headers


def can_answer_directly(request: web.BaseRequest) -> bool:
    """Whether a :class:`DirectResponse` answers ``request`` as aiohttp's ``Response`` would: a ``GET`` over
    HTTP/1.1 that keeps the connection alive, with no more than :data:`WRITE_BUFFER_LIMIT` bytes still waiting
    to reach the caller. (It runs no ``on_response_prepare`` signal: :func:`small_response` checks there is none.)"""
    transport = request.transport
    return (
        request.method == hdrs.METH_GET
        and request.version == HttpVersion11
        and request.keep_alive
        and transport is not None
        and transport.get_write_buffer_size() <= WRITE_BUFFER_LIMIT
    )


def answers_directly(request: web.BaseRequest, app: web.Application) -> bool:
    """Whether a :class:`DirectResponse` answers ``request`` as aiohttp would, ``app`` included: it runs no
    ``on_response_prepare`` signal, which a direct answer would skip."""
    return not app.on_response_prepare and can_answer_directly(request)


def small_response(
    request: web.BaseRequest, app: web.Application, *, status: int, body: bytes, headers: dict[str, str], now: float
) -> web.StreamResponse:
    """A 200 with ``body`` or a 304: a :class:`DirectResponse` where it answers alike (and ``app`` runs no
    ``on_response_prepare`` signal, which it would skip), else aiohttp's ``Response``."""
    if answers_directly(request, app):
        return DirectResponse(status=status, body=body, headers=headers, now=now)
    return web.Response(status=status, body=body or None, headers=headers)


class HttpDate:
    """``Date`` header values, formatted once per second of the clock it is given."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second, self._value = second, formatdate(second, usegmt=True)
        return self._value


http_date = HttpDate()


class DirectResponse(web.StreamResponse):
    """A 200 with a body already rendered, or a 304, written whole to the transport by :meth:`prepare`.

    Its ``headers`` are the ones sent; the edge adds its own before aiohttp prepares the response, as for any
    other (a fixed head takes only :attr:`request_id`), and ``Content-Length``, ``Date`` and ``Server`` follow
    them (:func:`trailer`), as aiohttp adds them. ``fixed``: header lines serialized once for many responses
    (proxy/answers.py), the first written before the request id and ``headers``, the second after them, the
    trailer included; ``Cache-Control`` is among the first, so the edge adds only its request id, as
    :attr:`request_id` (:attr:`has_fixed_head`). A header with a control character (tab aside) is refused
    with ``ValueError``, as aiohttp refuses it. Like aiohttp's writer, :meth:`prepare` waits while the transport is
    past its high-water mark, so a caller that stops reading holds at most :data:`WRITE_BUFFER_LIMIT` and one
    answer.
    """

    def __init__(
        self,
        *,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        now: float,
        fixed: tuple[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(status=status, headers=headers)
        if status not in STATUS_LINES or (status == 304 and body):
            raise ValueError("a direct response is a 200 with a body or a 304 without one")
        self._payload = body
        self._now = now
        self._fixed = fixed
        self._sent = -1  # bytes written, head included (aiohttp's body_length), once prepared
        self._closing = False
        # X-Request-ID, written after fixed[0] and before headers: the edge's, on a response whose head is fixed
        self.request_id: str | None = None

    @property
    def has_fixed_head(self) -> bool:
        """Whether its head was serialized once (``fixed``, ``Cache-Control`` included): the edge then sets only
        :attr:`request_id` (plain characters: the edge makes sure of it)."""
        return self._fixed is not None

    @property
    def prepared(self) -> bool:
        return self._sent >= 0

    @property
    def keep_alive(self) -> bool:
        return not self._closing

    @property
    def body_length(self) -> int:
        return max(self._sent, 0)

    def force_close(self) -> None:
        self._closing = True

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Write the whole response, once. ``ConnectionResetError`` when the caller has gone."""
        if self._sent >= 0:
            return None
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the caller closed the connection")
        headers = self.headers
        if self._closing:
            headers[hdrs.CONNECTION] = "close"
        if self._fixed is None:
            tail = trailer(self.status, len(self._payload), self._now)
            headers.popall(hdrs.CONTENT_LENGTH, None)  # the body's own length, whatever a handler said
            for name in (hdrs.DATE, hdrs.SERVER):  # a handler's own stay where it put them, as with aiohttp
                if name in headers:
                    del tail[name]
            before, after = b"", header_lines(tail)
        else:
            before, after = self._fixed
        own = header_lines(headers) if headers else b""  # a fixed head's: Connection: close at most
        if self.request_id is not None:  # where the edge puts it in headers: after Cache-Control
            own = f"{REQUEST_ID_HEADER}: {self.request_id}\r\n".encode() + own
        message = b"".join((STATUS_LINES[self.status], before, own, after, b"\r\n", self._payload))
        transport.write(message)
        self._sent = len(message)
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:  # past the high-water mark: wait, as aiohttp's
            await request.writer.drain()
        return None

    def __repr__(self) -> str:
        return f"<DirectResponse {self.status} {'sent' if self.prepared else 'not prepared'}>"

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("a direct response is written whole by prepare()")

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            raise RuntimeError("a direct response is written whole by prepare()")

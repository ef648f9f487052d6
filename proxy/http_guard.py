"""What the proxy does about callers at the HTTP level, below its routes: parser errors, HTTP versions, bodies.

- A request aiohttp's parser refuses is answered 400 by aiohttp itself, with the parser's message as the body,
  and that message quotes the offending bytes (a header line after ``Authorization: Token <key>`` carries the
  caller's key). :func:`redact_parser_error_responses` makes that body say only that the request could not be
  parsed. (:mod:`proxy.logs` redacts the log line the same error writes.)
- aiohttp's parser reads HTTP/0.9 (a request line without a version) and HTTP/2.0 request lines as any other and
  answers in that version. :func:`unsupported_version` tells the edge (proxy/edge.py) to refuse them.
- :func:`read_body` reads a request body within a deadline, and tells a caller that went away mid-body apart
  from a failure of the proxy's.
- :func:`field_value` reads a list header the proxy parses in Python (content negotiation, Cache-Control, Pragma,
  If-None-Match, If-Match) within a bound: aiohttp accepts 128 lines of 8 KiB, and a megabyte of commas took 0.3 to
  0.6 s of the event loop to parse, every other caller's time, without a client key for ``Accept``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDictProxy

from proxy.errors import ProxyError

SUPPORTED_VERSIONS = frozenset({HttpVersion10, HttpVersion11})


# List headers parsed in Python

MAX_LIST_FIELD = 2048  # bytes of Accept, Accept-Encoding, Cache-Control or Pragma, lines joined: ~10x real ones
MAX_ENTITY_TAG_LIST = 8192  # If-None-Match or If-Match: a client cache may send a tag per variant it holds


class HeaderFieldTooLarge(ProxyError):
    """A header the proxy parses is past its bound (RFC 6585 431)."""

    status = 431


def field_value(headers: CIMultiDictProxy[str], name: str, limit: int = MAX_LIST_FIELD) -> str:
    """The lines of header ``name`` joined with commas (one list, RFC 9110 5.3): "" when absent; 431 past
    ``limit`` bytes, a character beyond ASCII counting four (a str of one such holds four bytes a character, and
    the memos of :mod:`proxy.negotiation` and :mod:`proxy.directives` keep these values)."""
    value = ",".join(headers.getall(name, ()))
    if (len(value) if value.isascii() else 4 * len(value)) > limit:
        raise HeaderFieldTooLarge(f"The request's {name} header is too large (over {limit} bytes).")
    return value


# Request bodies


class RequestBodyTimeout(ProxyError):
    """The body did not arrive within ``PROXY_REQUEST_BODY_TIMEOUT``: answered 408, and the connection closed."""

    status = 408
    detail = "The request body did not arrive in time."


class ClientClosedRequest(ProxyError):
    """The caller closed the connection before its body arrived. Nobody reads the answer; it is counted with
    nginx's 499 ("client closed request") so that it is never taken for a server error."""

    status = 499
    detail = "Client closed request."


async def read_body(request: web.Request, deadline: float) -> bytes:
    """The whole body (bounded by the application's ``client_max_size``), within ``deadline`` seconds."""
    if request.transport is None and not request.content.is_eof():
        # Gone before the handler started: aiohttp only fails the body of a request whose handler is running,
        # so this body would never end.
        raise ClientClosedRequest()
    try:
        async with asyncio.timeout(deadline):
            return await request.read()
    except TimeoutError:
        if request.transport is None:
            raise ClientClosedRequest() from None
        raise RequestBodyTimeout() from None
    except ConnectionError:  # aiohttp's "Connection lost" when the caller goes away mid-body
        raise ClientClosedRequest() from None


class ClosingResponse(web.Response):
    """A response after which the connection is closed at once.

    ``force_close()`` alone is not enough when the body was not read: aiohttp then keeps reading (and dropping)
    the rest of it for up to 10 s before closing (its "lingering close"), which is what a slow sender wants.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force_close()  # "Connection: close"

    async def write_eof(self, data: bytes = b"") -> None:
        request = self._req  # write_eof forgets it
        await super().write_eof(data)
        if request is not None and request.protocol is not None:
            request.protocol.force_close()  # the answer is written; the transport flushes it, then closes


# HTTP versions


def unsupported_version(request: web.Request) -> bool:
    """True for any version but HTTP/1.0 and 1.1, after making the request answerable in HTTP/1.1.

    aiohttp writes the status line in the request's version ("HTTP/0.9 200 OK", "HTTP/2.0 ..."), so the refusal
    would be written in the very version it refuses. The request's version is replaced by 1.1 (read only by the
    response it is about to write) so that the 505 is plain HTTP/1.1. ``request.version`` is reified: its value
    is cached in the request's ``_cache`` on first read, so the cache is where it is replaced.
    """
    if request.version in SUPPORTED_VERSIONS:
        return False
    request._version = HttpVersion11  # see above; the request is answered 505 and closed
    request._cache["version"] = HttpVersion11
    return True


# Parser errors


_REDACTED_MARK = "_annotation_proxy_redacted"


def redact_parser_error_responses() -> None:
    """Make aiohttp's 400 for an unparsable request say only that (idempotent: installed once per process).

    aiohttp has no hook for that body: :meth:`RequestHandler.handle_error` (a public class) builds it from the
    parser's message. The wrapper passes every other error through unchanged.
    """
    original = RequestHandler.handle_error
    if getattr(original, _REDACTED_MARK, False):
        return

    def handle_error(
        self: RequestHandler,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            message = f"Bad request: the request could not be parsed ({type(exc).__name__}).\n"
        return original(self, request, status, exc, message)

    setattr(handle_error, _REDACTED_MARK, True)
    RequestHandler.handle_error = handle_error  # type: ignore[method-assign]

"""The edge every response passes through, wrapped around each route's handler when the route is added.

:func:`observed` gives each request its id, turns exceptions into responses in Label Studio's error shape (so
that the SDK's ``ApiError`` parses them), sets ``Cache-Control: no-store`` where the handler set none, times and
counts the request and writes its access-log line. :func:`add_fallbacks` answers what no route serves: a method a
path does not take (405, with ``Allow``) and a path nothing serves (404), through the same edge.

A wrapper per route rather than an aiohttp middleware: with no middleware, aiohttp calls the handler directly,
without the chain it otherwise builds around every request (docs/performance.md), and the route's name is known
when it is wrapped instead of looked up per request.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from proxy import __version__
from proxy.cache_status import cache_status
from proxy.direct import REQUEST_ID_HEADER, DirectResponse
from proxy.errors import NotAuthenticated, ProxyError, UpstreamError
from proxy.http_guard import ClientClosedRequest, ClosingResponse, RequestBodyTimeout, unsupported_version
from proxy.keys import CACHE_RESULT, METRICS, REFUSAL, REQUEST_ID
from proxy.logs import ACCESS_LOG
from proxy.paths import PathMemo

log = logging.getLogger("proxy.routes")
error_log = logging.getLogger("proxy.errors")

JSON = "application/json"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
NO_STORE = "no-store"  # every response but an annotation's: errors, /metrics, /healthz, /readyz
UNMATCHED = "unmatched"  # the route label of what no route serves

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is short and plain, else a new one."""
    if header is not None and SANE_REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


def _request_ids() -> Callable[[], str]:
    """32 hex digits, like a UUID's: 16 random per process, then a counter (a uuid4 per request costs 2 us)."""
    prefix = secrets.token_hex(8)
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):016x}"


new_request_id = _request_ids()


def error_body(status: int, detail: str) -> bytes:
    """Label Studio's error shape, which the SDK's ``ApiError`` carries as its body."""
    body = {
        "id": str(uuid.uuid4()),
        "status_code": status,
        "version": __version__,
        "detail": detail,
        "exc_info": None,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def error_response(status: int, detail: str, *, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, body=error_body(status, detail), headers=headers)
    response.content_type = JSON
    return response


def path_as_sent(request: web.BaseRequest) -> str:
    """The request's path as the caller sent it: still percent-encoded, without the query (where a caller may
    have put what it should not) or a fragment. The request line's own string when it is origin-form (``/...``):
    reading it costs nothing, where ``request.path`` decodes a new URL per request."""
    raw = request.raw_path
    if not raw.startswith("/"):  # absolute-form ("GET http://host/...") or "*": the URL aiohttp parsed
        return request.rel_url.raw_path
    return origin_path(raw)


@PathMemo
def origin_path(raw_path: str) -> str:
    """An origin-form request-target (``/...``) without its query or fragment."""
    return raw_path.partition("?")[0].partition("#")[0]


def observed(app: web.Application, route: str, handler: Handler) -> Handler:
    """``handler`` behind the edge, its requests counted and logged as ``route``."""
    # Per request, straight to the plain numbers (proxy/request_stats.py). Labels are bounded here: route names,
    # known methods, status codes, REQUEST_CACHE_LABELS.
    request_done = app[METRICS].requests.request_done
    record_access = ACCESS_LOG.record

    async def edge(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = request_id
        response: web.StreamResponse
        try:
            if unsupported_version(request):  # HTTP/0.9 or 2.0: aiohttp's parser reads them, the proxy does not
                response = error_response(505, "HTTP version not supported: use HTTP/1.1 or HTTP/1.0.")
                response.force_close()
            else:
                response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - every error is answered here; CancelledError is not an Exception
            response = error_to_response(request, exc)
        if isinstance(response, DirectResponse) and response.has_fixed_head:  # Cache-Control is in it
            response.request_id = request_id
        else:
            headers = response.headers
            headers[REQUEST_ID_HEADER] = request_id
            if hdrs.CACHE_CONTROL not in headers:  # only annotations may be kept, and only as they say
                headers[hdrs.CACHE_CONTROL] = NO_STORE

        elapsed = time.perf_counter() - started
        method = request.method
        if method not in KNOWN_METHODS:
            method = "OTHER"
        cache = request.get(CACHE_RESULT)
        status = response.status
        request_done(route, method, status, cache or "none", elapsed)
        record_access(method, route, path_as_sent(request)[:256], status, cache, elapsed, request_id)
        return response

    return edge


def add_fallbacks(app: web.Application) -> None:
    """After every route: each path's other methods answer 405 with ``Allow``, every other path 404, both in
    Label Studio's error shape and through the edge (counted and logged as ``unmatched``)."""
    for resource in list(app.router.resources()):
        if not isinstance(resource, web.Resource):  # static files and the like: the proxy adds none
            continue
        allowed = {route.method for route in resource}
        if hdrs.METH_ANY not in allowed:
            resource.add_route(hdrs.METH_ANY, observed(app, UNMATCHED, method_not_allowed(sorted(allowed))))
    app.router.add_route(hdrs.METH_ANY, "/{path:.*}", observed(app, UNMATCHED, _not_found), name=UNMATCHED)


def method_not_allowed(allowed: list[str]) -> Handler:
    """A handler answering 405 with ``Allow: <allowed>`` (through :func:`error_to_response`)."""

    async def not_allowed(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    return not_allowed


async def _not_found(request: web.Request) -> web.StreamResponse:
    """What no route serves; or what the application refused before any handler (proxy/server.py)."""
    raise request.get(REFUSAL) or web.HTTPNotFound()


def error_to_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The one place where exceptions become responses, in Label Studio's error shape (aiohttp's redirects and
    other non-errors are raised again, for aiohttp to answer)."""
    if isinstance(exc, ClientClosedRequest):  # the caller's doing: one line, no traceback, counted as 499
        log.info("client closed the request", extra={"request_id": request[REQUEST_ID], "path": request.path[:256]})
        return web.Response(status=exc.status)  # never written: there is nobody to read it
    if isinstance(exc, RequestBodyTimeout):  # close at once, without reading the rest of a slow body
        return ClosingResponse(status=exc.status, body=error_body(exc.status, exc.detail), content_type=JSON)
    if isinstance(exc, ProxyError):
        headers: dict[str, str] = {}
        if isinstance(exc, NotAuthenticated):
            headers[hdrs.WWW_AUTHENTICATE] = "Token"
        if isinstance(exc, UpstreamError):
            headers["Cache-Status"] = cache_status(fwd=exc.fwd, fwd_status=exc.upstream_status, detail=exc.outcome)
            error_log.warning(
                "upstream failure",
                extra={
                    "outcome": exc.outcome,
                    "upstream_status": exc.upstream_status,
                    "detail": exc.detail,
                    "request_id": request[REQUEST_ID],
                },
            )
        return error_response(exc.status, exc.detail, headers=headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        headers = {}
        detail = exc.reason
        if isinstance(exc, web.HTTPMethodNotAllowed):
            headers[hdrs.ALLOW] = ", ".join(sorted(exc.allowed_methods))
            detail = f'Method "{request.method[:32]}" not allowed.'
        elif isinstance(exc, web.HTTPNotFound):
            detail = "Not found."
        return error_response(exc.status, detail, headers=headers)
    # The last resort: log it, answer without internals.
    error_log.error(
        "unhandled error", exc_info=exc, extra={"request_id": request.get(REQUEST_ID), "path": request.path}
    )
    return error_response(500, "Internal server error.")

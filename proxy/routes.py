"""The HTTP edge: routes, thin handlers, and the one middleware that every response passes through.

``edge`` gives each request its id, turns exceptions into responses in Label Studio's error shape (so that the
SDK's ``ApiError`` parses them), times and counts the request and writes its access-log line. Handlers only
translate between HTTP and :class:`proxy.service.AnnotationService`.
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
from multidict import CIMultiDictProxy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import __version__
from proxy.cache_status import FROM_CACHE, cache_status, served_status
from proxy.directives import ORDINARY, RequestDirectives, from_headers
from proxy.errors import (
    AnnotationNotFound,
    CacheError,
    NotAcceptable,
    NotAuthenticated,
    ProxyError,
    PurgeDisabled,
    ServiceUnavailable,
    UpstreamError,
)
from proxy.freshness import encoded_tag, if_none_match
from proxy.http_guard import ClientClosedRequest, ClosingResponse, RequestBodyTimeout, unsupported_version
from proxy.keys import (
    ADMIN_KEYS,
    CACHE_RESULT,
    CLIENT_KEYS,
    CLOCK,
    LIVE_BODIES,
    METRICS,
    READINESS,
    REQUEST_ID,
    SERVICE,
    SETTINGS,
)
from proxy.logs import ACCESS_LOG
from proxy.models import INT64_MAX
from proxy.negotiation import GZIP, accepts_json, wants_gzip
from proxy.openapi import document
from proxy.render import body_parts, gzipped
from proxy.served import Served
from proxy.webhooks import label_studio_webhook

log = logging.getLogger("proxy.routes")
error_log = logging.getLogger("proxy.errors")

JSON = "application/json"
ALLOWED_ON_ANNOTATIONS = "GET, HEAD"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
ANNOTATION_ID = re.compile(r"[0-9]+")
ANNOTATION_ROUTE = "/api/annotations/{id:[^/]+}{slash:/?}"
# Every annotation a caller keeps is checked with the proxy before it is used again (a 304 when unchanged):
# a webhook's change shows at once, and no shared cache keeps what depends on the caller's key.
REVALIDATE = "private, no-cache"
NO_STORE = "no-store"  # every other response: errors, /metrics, /healthz, /readyz
MIN_COMPRESSED_BYTES = 1024  # below this, gzip saves less than a packet and costs a round of work

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Pure helpers


def parse_annotation_id(raw: str) -> int:
    """The id in a request path, exactly as Label Studio's ``<int:pk>`` reads it, or 404.

    ``raw`` is the path segment as the caller sent it (still percent-encoded): only ASCII digits are accepted,
    so encoded digits, signs, spaces and Unicode digits never become an id. Leading zeros are ignored, as
    Label Studio ignores them. 0 and ids past 2^63-1 name no annotation.
    """
    if not ANNOTATION_ID.fullmatch(raw):
        raise AnnotationNotFound()
    digits = raw.lstrip("0")
    if not digits or len(digits) > len(str(INT64_MAX)):
        raise AnnotationNotFound()
    annotation_id = int(digits)
    if annotation_id > INT64_MAX:
        raise AnnotationNotFound()
    return annotation_id


def wants_expanded(query_values: list[str]) -> bool:
    """Whether ``?expand=`` asks for ``completed_by`` (comma-separated lists allowed, as Label Studio)."""
    return any("completed_by" in (v.strip() for v in value.split(",")) for value in query_values)


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is short and plain, else a new one."""
    if header is not None and SANE_REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


def _request_ids() -> Callable[[], str]:
    """32 hex digits, like a UUID's: 16 random per process, then a counter (a uuid4 per request costs 2 µs)."""
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


# Middlewares


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: the request's id, the response (an exception becomes one), metrics, the access log."""
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
    response.headers[REQUEST_ID_HEADER] = request_id
    if hdrs.CACHE_CONTROL not in response.headers:  # only annotations may be kept, and only as they say
        response.headers[hdrs.CACHE_CONTROL] = NO_STORE

    elapsed = time.perf_counter() - started
    route = request.match_info.route.name or "unmatched"
    method = request.method if request.method in KNOWN_METHODS else "OTHER"
    cache = request.get(CACHE_RESULT)
    request.app[METRICS].request_done(route, method, response.status, cache or "none", elapsed)
    ACCESS_LOG(
        method=method,
        route=route,
        path=request.path[:256],
        status=response.status,
        cache=cache,
        duration_ms=round(elapsed * 1000, 3),
        request_id=request_id,
    )
    return response


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
            headers["Cache-Status"] = cache_status(fwd_status=exc.upstream_status, detail=exc.outcome)
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


# Handlers


def id_from_path(request: web.Request) -> int:
    """The id segment (``/api/annotations/<id>/``, ``/cache/annotations/<id>``) as the caller sent it."""
    # The raw path, not match_info: aiohttp decodes %-escapes there ("%31" would become "1", "%2F" a "/").
    # rel_url, so that an absolute-form request line ("GET http://host/api/...") parses the same.
    return parse_annotation_id(request.rel_url.raw_path.split("/")[3])


def negotiate(request: web.Request) -> None:
    """Label Studio's content negotiation, in its order (REST framework's): ``?format=`` other than ``json`` is a
    404 and an ``Accept`` without JSON a 406, both before the key and the lookup."""
    if request.query_string:  # most requests have none: no query to parse
        formats = request.query.getall("format", ())
        if formats and formats[-1] not in ("", "json"):
            raise web.HTTPNotFound()  # it renders JSON only
    headers = request.headers
    if hdrs.ACCEPT in headers and not accepts_json(",".join(headers.getall(hdrs.ACCEPT))):
        raise NotAcceptable()


def request_directives(headers: CIMultiDictProxy[str]) -> RequestDirectives:
    """The request's Cache-Control and Pragma (proxy/directives.py); most requests send neither."""
    if hdrs.CACHE_CONTROL not in headers and hdrs.PRAGMA not in headers:
        return ORDINARY
    return from_headers(headers.getall(hdrs.CACHE_CONTROL, ()), headers.getall(hdrs.PRAGMA, ()))


async def get_annotation(request: web.Request) -> web.StreamResponse:
    app = request.app
    negotiate(request)
    scope = app[CLIENT_KEYS].check(request.headers.get(hdrs.AUTHORIZATION))
    annotation_id = id_from_path(request)
    expand = bool(request.query_string) and wants_expanded(request.query.getall("expand", []))
    allowed = None if scope is None else scope.__contains__
    try:
        served = await app[SERVICE].lookup(
            annotation_id,
            expand=expand,
            request_id=request[REQUEST_ID],
            allowed=allowed,
            directives=request_directives(request.headers),
        )
    except AnnotationNotFound:
        request[CACHE_RESULT] = "hit"  # of another project, known to the cache: nothing was fetched
        raise
    except ProxyError:
        request[CACHE_RESULT] = "miss"  # the cache missed, and Label Studio failed: counted as a miss
        raise
    request[CACHE_RESULT] = served.result
    if scope is not None and (served.entry is None or served.entry.project not in scope):
        # One answer, to the byte, for "does not exist" and "not yours": no Cache-Status on either (it would
        # tell a cached annotation of another project from a remembered 404), no ETag.
        raise AnnotationNotFound()
    return await annotation_response(request, served)


async def annotation_response(request: web.Request, served: Served) -> web.StreamResponse:
    """The answer for what the lookup served: 200 (gzipped when accepted), 304, or a 404 (docs/api.md)."""
    app = request.app
    settings = app[SETTINGS]
    now = app[CLOCK]()
    entry = served.entry
    headers = {"Cache-Status": served_status(served, now=now, ttl=settings.proxy_cache_ttl)}
    if entry is None:
        seen = served.missing_since
        if served.result == "negative_hit" and seen is not None and seen <= now * 1_000_000:  # not a deletion's
            headers[hdrs.AGE] = str(int(now - seen / 1_000_000))
        return error_response(404, AnnotationNotFound.detail, headers=headers)
    bodies = app[LIVE_BODIES]
    kept = bodies.keeps(entry)  # larger bodies are written in parts, never gzipped
    coding = None
    headers[hdrs.CACHE_CONTROL] = REVALIDATE  # see docs/freshness.md: the webhook's promise, the caller's key
    if settings.proxy_compression:
        headers[hdrs.VARY] = hdrs.ACCEPT_ENCODING
        if kept and len(entry.body) >= MIN_COMPRESSED_BYTES:
            coding = GZIP if wants_gzip(",".join(request.headers.getall(hdrs.ACCEPT_ENCODING, ()))) else None
    if served.result in FROM_CACHE:
        headers[hdrs.AGE] = str(max(0, int(now - entry.stored_at)))
    etag = headers[hdrs.ETAG] = encoded_tag(entry.etag, coding)
    if hdrs.IF_NONE_MATCH in request.headers and if_none_match(request.headers.getall(hdrs.IF_NONE_MATCH), etag):
        return web.Response(status=304, headers=headers)
    # Label Studio renders created_ago per response; so does the proxy, once per minute of age.
    headers[hdrs.CONTENT_TYPE] = JSON
    now_us = int(now * 1_000_000)
    if coding is not None:
        headers[hdrs.CONTENT_ENCODING] = coding
    if kept or request.method == hdrs.METH_HEAD:
        return web.Response(body=bodies.body(entry, now_us, coding), headers=headers)
    return await write_in_parts(request, headers, body_parts(entry, now_us))


async def write_in_parts(
    request: web.Request, headers: dict[str, str], parts: tuple[memoryview | bytes, ...]
) -> web.StreamResponse:
    """A large body written as views of the stored bytes around its rendered created_ago: no copy of it per
    response (proxy/budget.py). Each write waits while the caller's socket is behind."""
    headers[REQUEST_ID_HEADER] = request[REQUEST_ID]  # sent with prepare(), before the edge would add it
    response = web.StreamResponse(headers=headers)
    response.content_length = sum(len(part) for part in parts)
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


async def purge_annotation(request: web.Request) -> web.Response:
    """``DELETE /cache/annotations/{id}``: operators drop an id from the cache (``PROXY_ADMIN_KEYS`` only)."""
    admin_keys = request.app[ADMIN_KEYS]
    if admin_keys.anonymous:
        raise PurgeDisabled()
    admin_keys.check(request.headers.get(hdrs.AUTHORIZATION))
    annotation_id = id_from_path(request)
    try:
        await request.app[SERVICE].purge(annotation_id)
    except CacheError:
        raise ServiceUnavailable("The cache could not be reached; nothing was purged.") from None
    log.info("purged", extra={"annotation_id": annotation_id, "request_id": request[REQUEST_ID]})
    return web.Response(status=204)


async def not_allowed(request: web.Request) -> web.Response:
    """Writes on the annotation path: the proxy never changes data with its token."""
    return error_response(
        405,
        f'Method "{request.method[:32]}" not allowed.',
        headers={hdrs.ALLOW: ALLOWED_ON_ANNOTATIONS},
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    headers = {hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST, hdrs.VARY: hdrs.ACCEPT_ENCODING}
    if wants_gzip(",".join(request.headers.getall(hdrs.ACCEPT_ENCODING, ()))):  # 26 KB to 3 KB
        body = gzipped(body)
        headers[hdrs.CONTENT_ENCODING] = GZIP
    return web.Response(body=body, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Checks nothing else, so a sick dependency never restarts the proxy."""
    return web.json_response({"status": "ok"})


async def openapi_endpoint(request: web.Request) -> web.Response:
    """The proxy's own OpenAPI document (proxy/openapi.py)."""
    return web.json_response(document())


async def readyz(request: web.Request) -> web.Response:
    """Readiness of this replica: 503 only while starting or shutting down; a failing Label Studio or Redis makes
    it ``degraded``, still 200 (proxy/readiness.py says why). Costs no request to anyone: the checks run in the
    background."""
    report = request.app[READINESS].report()
    return web.json_response(report.body(), status=200 if report.ready else 503)


def setup_routes(app: web.Application) -> None:
    """Every route the proxy has. Nothing but the annotation route ever reaches Label Studio."""
    # With and without the trailing slash, both served (Label Studio does not redirect either).
    resource = app.router.add_resource(ANNOTATION_ROUTE, name="annotation")
    resource.add_route(hdrs.METH_GET, get_annotation)
    resource.add_route(hdrs.METH_HEAD, get_annotation)  # aiohttp drops the body
    resource.add_route(hdrs.METH_ANY, not_allowed)  # every other method, writes first of all
    purge = app.router.add_resource("/cache/annotations/{id:[^/]+}{slash:/?}", name="purge")
    purge.add_route(hdrs.METH_DELETE, purge_annotation)
    if app[SETTINGS].proxy_webhook_secret is not None:
        app.router.add_post("/webhooks/label-studio", label_studio_webhook, name="webhook")
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/openapi.json", openapi_endpoint, name="openapi")

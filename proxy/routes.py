"""The HTTP edge: routes, thin handlers, and the two middlewares that every response passes through.

``observe`` (outermost) gives each request its id, times it, counts it and writes its one access-log line.
``errors`` is the one place where exceptions become responses, in Label Studio's error shape so that the SDK's
``ApiError`` parses them. Handlers only translate between HTTP and :class:`proxy.service.AnnotationService`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import __version__
from proxy.errors import (
    AnnotationNotFound,
    NotAuthenticated,
    ProxyError,
    UpstreamAuthRejected,
    UpstreamError,
)
from proxy.keys import CACHE_RESULT, CLIENT_KEYS, METRICS, REQUEST_ID, SERVICE, STORE, UPSTREAM
from proxy.models import INT64_MAX
from proxy.service import Served, cache_status

log = logging.getLogger("proxy.access")
error_log = logging.getLogger("proxy.errors")

JSON = "application/json"
ALLOWED_ON_ANNOTATIONS = "GET, HEAD"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
ANNOTATION_ID = re.compile(r"[0-9]+")
READINESS_TIMEOUT = 5.0
ANNOTATION_ROUTE = "/api/annotations/{id:[^/]+}{slash:/?}"

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
    return uuid.uuid4().hex


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
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID] = request_id
    response = await handler(request)
    response.headers[REQUEST_ID_HEADER] = request_id

    elapsed = time.perf_counter() - started
    route = request.match_info.route.name or "unmatched"
    method = request.method if request.method in KNOWN_METHODS else "OTHER"
    metrics = request.app[METRICS]
    metrics.http_requests.labels(route=route, method=method, status=str(response.status)).inc()
    metrics.http_duration.labels(route=route).observe(elapsed)
    log.info(
        "request",
        extra={
            "method": method,
            "route": route,
            "path": request.path[:256],
            "status": response.status,
            "cache": response.get(CACHE_RESULT),
            "duration_ms": round(elapsed * 1000, 3),
            "request_id": request_id,
        },
    )
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as exc:
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
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {}
        detail = exc.reason
        if isinstance(exc, web.HTTPMethodNotAllowed):
            headers[hdrs.ALLOW] = ", ".join(sorted(exc.allowed_methods))
            detail = f'Method "{request.method[:32]}" not allowed.'
        elif isinstance(exc, web.HTTPNotFound):
            detail = "Not found."
        return error_response(exc.status, detail, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the last resort: log it, answer without internals
        error_log.exception("unhandled error", extra={"request_id": request.get(REQUEST_ID), "path": request.path})
        return error_response(500, "Internal server error.")


# Handlers


async def get_annotation(request: web.Request) -> web.Response:
    request.app[CLIENT_KEYS].check(request.headers.get(hdrs.AUTHORIZATION))
    raw_id = request.raw_path.partition("?")[0].split("/")[3]
    annotation_id = parse_annotation_id(raw_id)
    expand = wants_expanded(request.query.getall("expand", []))
    served = await request.app[SERVICE].lookup(annotation_id, expand=expand, request_id=request[REQUEST_ID])
    return annotation_response(served)


def annotation_response(served: Served) -> web.Response:
    headers = {"Cache-Status": served.cache_status}
    if served.entry is None:
        response = error_response(404, AnnotationNotFound.detail, headers=headers)
    else:
        response = web.Response(body=served.entry.body, headers=headers)
        response.content_type = JSON
    response[CACHE_RESULT] = served.result
    return response


async def not_allowed(request: web.Request) -> web.Response:
    """Writes on the annotation path: the proxy never changes data with its token."""
    return error_response(
        405,
        f'Method "{request.method[:32]}" not allowed.',
        headers={hdrs.ALLOW: ALLOWED_ON_ANNOTATIONS},
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Checks nothing else, so a sick dependency never restarts the proxy."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the cache answers (when it is Redis) and Label Studio accepts the proxy's credentials."""
    store = request.app[STORE]
    upstream = request.app[UPSTREAM]
    request_id = request[REQUEST_ID]

    async def cache_check() -> str:
        await store.ping()
        return "ok"

    async def upstream_check() -> str:
        await upstream.check_credentials(request_id)
        return "ok"

    names = ("cache", "label_studio")
    results = await asyncio.gather(
        asyncio.wait_for(cache_check(), READINESS_TIMEOUT),
        asyncio.wait_for(upstream_check(), READINESS_TIMEOUT),
        return_exceptions=True,
    )
    checks: dict[str, dict[str, str]] = {}
    for name, result in zip(names, results, strict=True):
        checks[name] = {"status": "ok"} if result == "ok" else {"status": "failing", "error": _why(result)}
    checks["cache"]["backend"] = store.name
    ready = all(check["status"] == "ok" for check in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


def _why(result: object) -> str:
    if isinstance(result, UpstreamAuthRejected):
        return "Label Studio rejected the proxy's credentials (check LABEL_STUDIO_API_KEY)"
    if isinstance(result, ProxyError):
        return result.detail
    if isinstance(result, TimeoutError):
        return f"no answer within {READINESS_TIMEOUT:g} s"
    return str(result) or type(result).__name__


def setup_routes(app: web.Application) -> None:
    # With and without the trailing slash, both served (Label Studio does not redirect either).
    resource = app.router.add_resource(ANNOTATION_ROUTE, name="annotation")
    resource.add_route(hdrs.METH_GET, get_annotation)
    resource.add_route(hdrs.METH_HEAD, get_annotation)  # aiohttp drops the body
    for method in (hdrs.METH_POST, hdrs.METH_PUT, hdrs.METH_PATCH, hdrs.METH_DELETE):
        resource.add_route(method, not_allowed)
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")

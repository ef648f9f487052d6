"""The routes and their thin handlers: they translate between HTTP and :class:`proxy.service.AnnotationService`.

Every handler is added behind :func:`proxy.edge.observed` (request id, errors as responses, metrics, access log).
"""

from __future__ import annotations

import logging
import re

from aiohttp import hdrs, web
from multidict import CIMultiDictProxy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.answers import Answer, holds_until
from proxy.cache import CachedAnnotation
from proxy.cache_status import FROM_CACHE, served_status
from proxy.direct import REQUEST_ID_HEADER, answers_directly, header_lines, small_response, trailer
from proxy.directives import ORDINARY, RequestDirectives
from proxy.directives import parse as parse_directives
from proxy.edge import (
    JSON,
    add_fallbacks,
    error_response,
    method_not_allowed,
    observed,
    origin_path,
    path_as_sent,
)
from proxy.errors import (
    AnnotationNotFound,
    CacheError,
    NotAcceptable,
    NotCached,
    PreconditionFailed,
    ProxyError,
    PurgeDisabled,
    ServiceUnavailable,
)
from proxy.fair_slots import CALLER
from proxy.freshness import age_in_seconds, encoded_tag, if_match, if_none_match
from proxy.http_guard import MAX_ENTITY_TAG_LIST, ClientClosedRequest, field_value
from proxy.keys import (
    ADMIN_KEYS,
    ANSWERS,
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
from proxy.models import INT64_MAX
from proxy.negotiation import GZIP, accepts_json, wants_gzip
from proxy.openapi import document
from proxy.paths import PathMemo
from proxy.render import body_parts, gzipped
from proxy.served import Served
from proxy.server import ANNOTATION_ROUTE_NAME
from proxy.service import AnnotationService
from proxy.webhooks import label_studio_webhook

log = logging.getLogger("proxy.routes")

ANNOTATION_ID = re.compile(r"[0-9]+")
MAX_ID_DIGITS = len(str(INT64_MAX))
ANNOTATION_ROUTE = "/api/annotations/{id:[^/]+}{slash:/?}"
# Every annotation a caller keeps is checked with the proxy before it is used again (a 304 when unchanged):
# a webhook's change shows at once, and no shared cache keeps what depends on the caller's key.
REVALIDATE = "private, no-cache"
MIN_COMPRESSED_BYTES = 1024  # below this, gzip saves less than a packet and costs a round of work


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
    if not digits or len(digits) > MAX_ID_DIGITS:
        raise AnnotationNotFound()
    annotation_id = int(digits)
    if annotation_id > INT64_MAX:
        raise AnnotationNotFound()
    return annotation_id


def wants_expanded(query_values: list[str]) -> bool:
    """Whether ``?expand=`` asks for ``completed_by`` (comma-separated lists allowed, as Label Studio)."""
    return any("completed_by" in (v.strip() for v in value.split(",")) for value in query_values)


# Handlers


def id_from_path(request: web.Request) -> int:
    """The id segment (``/api/annotations/<id>/``, ``/cache/annotations/<id>``) as the caller sent it."""
    # The raw path, not match_info: aiohttp decodes %-escapes there ("%31" would become "1", "%2F" a "/"). The
    # request line's own string, query and all, is the memo's key: one lookup a request.
    raw = request.raw_path
    return id_in_path(raw if raw.startswith("/") else path_as_sent(request))


@PathMemo
def id_in_path(path: str) -> int:
    """The id in an origin-form path's fourth segment (a query or fragment aside), or 404
    (:func:`parse_annotation_id`)."""
    return parse_annotation_id(origin_path(path).split("/")[3])


def negotiate_format(request: web.Request) -> None:
    """Label Studio's content negotiation begins with ``?format=``: anything but ``json`` is a 404, before the
    ``Accept`` header (a 406), the key and the lookup (REST framework's order)."""
    formats = request.query.getall("format", ())
    if formats and formats[-1] not in ("", "json"):
        raise web.HTTPNotFound()  # it renders JSON only


def request_directives(headers: CIMultiDictProxy[str]) -> RequestDirectives:
    """The request's Cache-Control and Pragma (proxy/directives.py); most requests send neither."""
    if hdrs.CACHE_CONTROL not in headers and hdrs.PRAGMA not in headers:
        return ORDINARY
    return parse_directives(field_value(headers, hdrs.CACHE_CONTROL), field_value(headers, hdrs.PRAGMA))


class AnnotationRoute:
    """``GET`` and ``HEAD /api/annotations/{id}/``. A hit the hot tier holds is answered without a coroutine
    below :meth:`get`: it is the whole hit path besides aiohttp and the edge (docs/performance.md)."""

    def __init__(self, app: web.Application) -> None:
        settings = app[SETTINGS]
        self._app = app  # the service is there once the application has started
        self._keys, self._bodies, self._clock = app[CLIENT_KEYS], app[LIVE_BODIES], app[CLOCK]
        self._answers = app[ANSWERS]
        self._ttl, self._compression = settings.proxy_cache_ttl, settings.proxy_compression
        self._service: AnnotationService | None = None  # the application's, once it has started

    def _started(self) -> AnnotationService:
        self._service = self._app[SERVICE]
        return self._service

    async def get(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        query = "?" in request.raw_path  # most requests have none: no query to parse
        if query:
            negotiate_format(request)
        if hdrs.ACCEPT in headers and not accepts_json(field_value(headers, hdrs.ACCEPT)):
            raise NotAcceptable()
        scope = self._keys.check(headers.get(hdrs.AUTHORIZATION))
        annotation_id = id_from_path(request)
        expand = query and wants_expanded(request.query.getall("expand", []))
        directives = request_directives(headers)
        service = self._service or self._started()
        served = service.from_hot(annotation_id, expand=expand, directives=directives)
        from_hot = served is not None
        if served is None:
            caller = CALLER.set(self._keys.number(headers.get(hdrs.AUTHORIZATION)))  # its turn at Label Studio
            try:
                served = await service.from_store(
                    annotation_id,
                    expand=expand,
                    request_id=request[REQUEST_ID],
                    allowed=None if scope is None else scope.__contains__,
                    directives=directives,
                )
            except AnnotationNotFound:
                request[CACHE_RESULT] = "hit"  # of another project, known to the cache: nothing was fetched
                if directives.only_if_cached:
                    raise NotCached() from None  # see below
                raise
            except ProxyError:
                request[CACHE_RESULT] = "miss"  # the cache missed, and Label Studio failed: counted as a miss
                raise
            finally:
                CALLER.reset(caller)
        request[CACHE_RESULT] = served.result
        if scope is not None and (served.entry is None or served.entry.project not in scope):
            # One answer, to the byte, for "does not exist" and "not yours": no Cache-Status on either (it would
            # tell a cached annotation of another project from a remembered 404), no ETag. Asked only-if-cached,
            # a 504 for both: a 404 there would tell another project's version, kept for hours, from a 404
            # remembered for seconds (and from nothing at all, a 504).
            if directives.only_if_cached:
                raise NotCached()
            raise AnnotationNotFound()
        response = self.respond(request, served, from_hot=from_hot)
        if isinstance(response, PartsResponse):  # written here, so the edge times and counts its transfer
            await response.send(request)
        return response

    def respond(self, request: web.Request, served: Served, *, from_hot: bool = False) -> web.StreamResponse:
        """The answer for what the lookup served: 200 (gzipped when accepted), 304, or a 404 (docs/api.md).
        ``from_hot``: the hot tier served it (and will again: its answer is worth keeping, proxy/answers.py)."""
        headers = request.headers
        entry = served.entry
        now = self._clock()
        if entry is None:
            return not_found_response(served, served_status(served, now=now, ttl=self._ttl), now)
        bodies = self._bodies
        kept = bodies.keeps(entry)  # larger bodies are written in parts, never gzipped
        coding = None
        if self._compression and kept and len(entry.body) >= MIN_COMPRESSED_BYTES and hdrs.ACCEPT_ENCODING in headers:
            coding = GZIP if wants_gzip(field_value(headers, hdrs.ACCEPT_ENCODING)) else None
        if hdrs.IF_MATCH in headers and not if_match(field_value(headers, hdrs.IF_MATCH, MAX_ENTITY_TAG_LIST)):
            raise PreconditionFailed()  # before If-None-Match (RFC 9110 13.2.2), on a 200 to be
        if hdrs.IF_NONE_MATCH in headers and if_none_match(
            field_value(headers, hdrs.IF_NONE_MATCH, MAX_ENTITY_TAG_LIST), encoded_tag(entry.etag, coding)
        ):
            out = self.headers(served, entry, coding, now, status=304)
            return small_response(request, self._app, status=304, body=b"", headers=out, now=now)
        if from_hot and kept and served.result == "hit" and answers_directly(request, self._app):
            answer = self._answers.get(entry, coding, now) or self.keep_answer(served, entry, coding, now)
            return answer.response(now)
        out = self.headers(served, entry, coding, now, status=200)
        # Label Studio renders created_ago per response; so does the proxy, once per minute of age.
        now_us = int(now * 1_000_000)
        if kept or request.method == hdrs.METH_HEAD:  # a HEAD is never direct: aiohttp drops the body
            body = bodies.body(entry, now_us, coding)
            return small_response(request, self._app, status=200, body=body, headers=out, now=now)
        return PartsResponse(body_parts(entry, now_us), headers=out)

    def headers(
        self, served: Served, entry: CachedAnnotation, coding: str | None, now: float, *, status: int
    ) -> dict[str, str]:
        """A 200's or a 304's headers, ``Cache-Control`` last: just before the edge's request id, in an
        :class:`Answer`'s fixed lines too. See docs/freshness.md: the webhook's promise, the caller's key."""
        out = {"Cache-Status": served_status(served, now=now, ttl=self._ttl)}
        if self._compression:
            out[hdrs.VARY] = hdrs.ACCEPT_ENCODING
        if served.result in FROM_CACHE:
            out[hdrs.AGE] = str(age_in_seconds(entry, now))
        out[hdrs.ETAG] = encoded_tag(entry.etag, coding)
        if status == 200:
            out[hdrs.CONTENT_TYPE] = JSON
            if coding is not None:
                out[hdrs.CONTENT_ENCODING] = coding
        out[hdrs.CACHE_CONTROL] = REVALIDATE
        return out

    def keep_answer(self, served: Served, entry: CachedAnnotation, coding: str | None, now: float) -> Answer:
        """A hit's 200 serialized for every request until one of its bytes would change (proxy/answers.py)."""
        out = self.headers(served, entry, coding, now, status=200)  # Cache-Control last: before the request id
        body = self._bodies.body(entry, int(now * 1_000_000), coding)
        fixed = header_lines(out), header_lines(trailer(200, len(body), now))
        answer = Answer(entry, now, holds_until(entry, now, self._ttl), fixed, body)
        self._answers.keep(answer, coding)
        return answer


def not_found_response(served: Served, status: str, now: float) -> web.Response:
    """A 404 the lookup served: remembered (with its ``Age``), or Label Studio's just now."""
    headers = {"Cache-Status": status}
    seen = served.missing_seen
    if served.result == "negative_hit" and seen is not None and seen <= now:
        headers[hdrs.AGE] = str(int(now - seen))
    return error_response(404, AnnotationNotFound.detail, headers=headers)


class PartsResponse(web.StreamResponse):
    """A large body written as views of the stored bytes around its rendered created_ago: no copy of it per
    response (proxy/budget.py). Each write waits while the caller's socket is behind."""

    def __init__(self, parts: tuple[memoryview | bytes, ...], *, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        self.content_length = sum(len(part) for part in parts)
        self._parts = parts

    async def send(self, request: web.Request) -> None:
        """Write it all, inside the handler: the edge's duration and status include the transfer, and a caller
        that goes away mid-body is a 499 (:class:`ClientClosedRequest`), not a server error."""
        self.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]  # prepare() sends the headers: the edge's is too late
        try:
            await self.prepare(request)
            for part in self._parts:
                await self.write(part)
            await self.write_eof()
        except ConnectionError:  # aiohttp's "Connection lost" when the caller goes away mid-body
            raise ClientClosedRequest() from None


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


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    headers = {hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST, hdrs.VARY: hdrs.ACCEPT_ENCODING}
    if wants_gzip(field_value(request.headers, hdrs.ACCEPT_ENCODING)):  # 26 KB to 3 KB
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


def add_operations_routes(app: web.Application, *, metrics: bool = True) -> None:
    """``/healthz``, ``/readyz`` and, unless ``metrics`` is false, ``/metrics``: for the main listener or the
    operations listener (``PROXY_METRICS_PORT``). The main listener leaves ``/metrics`` out when an operations
    listener exists: the counters are every caller's, and a scoped key reading them around its own request would
    learn whether Label Studio answered 200 or 404 for an id of another project."""
    if metrics:
        app.router.add_get("/metrics", observed(app, "metrics", metrics_endpoint), name="metrics")
    app.router.add_get("/healthz", observed(app, "healthz", healthz), name="healthz")
    app.router.add_get("/readyz", observed(app, "readyz", readyz), name="readyz")


def setup_routes(app: web.Application) -> None:
    """Every route the proxy has. Nothing but the annotation route ever reaches Label Studio."""
    # With and without the trailing slash, both served (Label Studio does not redirect either).
    resource = app.router.add_resource(ANNOTATION_ROUTE, name=ANNOTATION_ROUTE_NAME)  # the front door's way in
    get_annotation = observed(app, ANNOTATION_ROUTE_NAME, AnnotationRoute(app).get)
    resource.add_route(hdrs.METH_GET, get_annotation)
    resource.add_route(hdrs.METH_HEAD, get_annotation)  # aiohttp drops the body
    # Every other method, writes first: a 405 counted under the route's own name (add_fallbacks' are 'unmatched').
    not_allowed = method_not_allowed([hdrs.METH_GET, hdrs.METH_HEAD])
    resource.add_route(hdrs.METH_ANY, observed(app, ANNOTATION_ROUTE_NAME, not_allowed))
    purge = app.router.add_resource("/cache/annotations/{id:[^/]+}{slash:/?}", name="purge")
    purge.add_route(hdrs.METH_DELETE, observed(app, "purge", purge_annotation))
    if app[SETTINGS].proxy_webhook_secret is not None:
        app.router.add_post("/webhooks/label-studio", observed(app, "webhook", label_studio_webhook), name="webhook")
    add_operations_routes(app, metrics=app[SETTINGS].proxy_metrics_port is None)
    app.router.add_get("/openapi.json", observed(app, "openapi", openapi_endpoint), name="openapi")
    add_fallbacks(app)

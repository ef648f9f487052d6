"""The proxy's own OpenAPI 3.1 document, served at ``GET /openapi.json``. Built in code, no I/O.

Every path the proxy routes is here with every status its code can answer on it, so a client generator (or
schemathesis, tests/test_schemathesis.py) may rely on the list. The annotation body is derived from the pydantic
models that validate Label Studio's bodies (:mod:`proxy.models`), and the webhook events from
:mod:`proxy.events`: the document cannot drift from what the proxy accepts. Unknown fields stay allowed, as
newer Label Studio versions add them.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from proxy import __version__
from proxy.events import EVENT, HANDLED_ACTIONS, SECRET_HEADER
from proxy.http_guard import MAX_ENTITY_TAG_LIST, MAX_LIST_FIELD
from proxy.models import INT64_MAX, Annotation, ExpandedAnnotation

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
JSON = "application/json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def _response_ref(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _schemas() -> dict[str, Schema]:
    """The annotation bodies, Label Studio's error shape, the webhook events and the proxy's own bodies."""
    _, annotations = models_json_schema(
        [(Annotation, "validation"), (ExpandedAnnotation, "validation")], ref_template=REF
    )
    events = EVENT.json_schema(ref_template=REF)
    schemas: dict[str, Schema] = {**annotations["$defs"], **events.pop("$defs")}
    for name in ("Annotation", "ExpandedAnnotation"):
        schemas[name]["additionalProperties"] = True  # newer Label Studio versions add fields
    for field in ("created_at", "updated_at"):
        schemas["Annotation"]["properties"][field]["description"] = "ISO 8601, from 1970 on."
    schemas["EventAnnotation"]["properties"]["updated_at"]["description"] = "ISO 8601, from 1970 on."
    events.pop("discriminator", None)  # the "other" branch below has no fixed action
    schemas["OtherEvent"] = {
        "type": "object",
        "description": "Any other action: answered 200 and ignored (counted).",
        "required": ["action"],
        "properties": {
            "action": {"type": "string", "maxLength": 64, "not": {"enum": sorted(HANDLED_ACTIONS)}},
        },
        "additionalProperties": True,
    }
    schemas["WebhookEvent"] = {"oneOf": [*events["oneOf"], _ref("OtherEvent")]}
    schemas["AnnotationBody"] = {
        "description": "Label Studio's body, byte for byte except `created_ago` (recomputed per response). "
        "`completed_by` is a user id, or with `?expand=completed_by` the user object.",
        "anyOf": [_ref("Annotation"), _ref("ExpandedAnnotation")],
    }
    schemas["Error"] = {
        "type": "object",
        "description": "Label Studio's error shape, which the SDK's `ApiError` parses.",
        "required": ["id", "status_code", "version", "detail", "exc_info"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status_code": {"type": "integer", "minimum": 400, "maximum": 599},
            "version": {"type": "string", "description": "The proxy's version."},
            "detail": {"type": "string"},
            "exc_info": {"type": "null"},
        },
        "additionalProperties": False,
    }
    schemas["WebhookResult"] = {
        "type": "object",
        "required": ["status", "action"],
        "properties": {
            "status": {"enum": ["applied", "ignored"]},
            "action": {"type": "string", "maxLength": 64},
            "annotations": {"type": "integer", "minimum": 0, "description": "How many annotations it touched."},
        },
        "additionalProperties": False,
    }
    check = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ok", "failing", "pending"]},
            "error": {"type": "string"},
            "backend": {"type": "string"},
        },
        "additionalProperties": False,
    }
    schemas["Readiness"] = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "degraded", "starting", "shutting down"]},
            "checks": {
                "type": "object",
                "description": "`cache` and `label_studio`: the last background check of each (`pending` before "
                "the first).",
                "properties": {"cache": check, "label_studio": check},
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }
    return schemas


def _error(description: str, **headers: Schema) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
    response["headers"] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}, **headers}
    return response


def _responses() -> dict[str, Schema]:
    cache_status = {"$ref": "#/components/headers/Cache-Status"}
    return {
        "Unauthenticated": _error(
            "Missing (`Authentication credentials were not provided.`) or unknown (`Invalid token.`) key.",
            **{"WWW-Authenticate": {"required": True, "schema": {"const": "Token"}}},
        ),
        "NotFound": _error(
            "`No Annotation matches the given query.`: the annotation does not exist, is outside the key's "
            "projects, or the id can never name one (anything but plain ASCII digits naming 1 to 2^63-1).",
            **{"Cache-Status": cache_status},
        ),
        "NotAllowed": _error(
            "Any method but GET and HEAD on the annotation path: the proxy never changes data.",
            Allow={"required": True, "schema": {"const": "GET, HEAD"}},
        ),
        "BadGateway": _error(
            "Label Studio sent something the proxy will not serve (an invalid body, an unexpected status, a "
            "redirect, a foreign 404), could not be reached, or rejected the proxy's own credentials.",
            **{"Cache-Status": cache_status},
        ),
        "CircuitOpen": _error(
            "Label Studio kept failing: the proxy stopped calling it for a few seconds; or every connection to Label "
            "Studio stayed busy until the request's deadline (never sent; `PROXY_UPSTREAM_MAX_CONNECTIONS`); in "
            "both cases with no cached copy young enough (`PROXY_STALE_IF_ERROR_TTL`) to serve instead. Or no room "
            "in the memory budget for the body in time (`PROXY_INFLIGHT_MAX_BYTES`), without `Cache-Status`.",
            **{"Cache-Status": cache_status},
        ),
        "GatewayTimeout": _error(
            "Label Studio did not answer within `PROXY_UPSTREAM_TIMEOUT`; or the request said `only-if-cached` and "
            "nothing usable is cached (`Not in the cache, and the request said only-if-cached.`).",
            **{"Cache-Status": cache_status},
        ),
        "NotAcceptable": _error(
            "`Could not satisfy the request Accept header.`: `Accept` names nothing matching `application/json`, "
            "decided as Label Studio decides it (before the key and the lookup).",
        ),
        "PreconditionFailed": _error(
            "`Precondition failed: If-Match names no current entity tag (the proxy's tags are weak).`: `If-Match` "
            "is compared strongly (RFC 9110 13.1.1) and the proxy's tags are weak, so only `If-Match: *` holds.",
        ),
        "HeaderTooLarge": _error(
            "`The request's <name> header is too large (over <n> bytes).`: `Accept`, `Accept-Encoding`, "
            f"`Cache-Control` or `Pragma` past {MAX_LIST_FIELD} bytes, or `If-None-Match` or `If-Match` past "
            f"{MAX_ENTITY_TAG_LIST} (lines joined; a character beyond ASCII counts four).",
        ),
    }


def _cached_headers() -> dict[str, Schema]:
    """The headers of a 200 or 304 for an annotation (docs/api.md)."""
    return {
        "ETag": {"required": True, "schema": {"type": "string", "pattern": '^W/".+"$'}},
        "Cache-Control": {"required": True, "schema": {"const": "private, no-cache"}},
        "Age": {"description": "Seconds since the proxy fetched a cached answer.", "schema": {"type": "integer"}},
        "Vary": {"description": "`Accept-Encoding` while compression is on.", "schema": {"type": "string"}},
        "Cache-Status": {"$ref": "#/components/headers/Cache-Status"},
        "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
    }


def _annotation_get(*, head: bool, suffix: str) -> Schema:
    ok: Schema = {
        "description": "The annotation, as Label Studio returns it." + (" Headers only." if head else ""),
        "headers": {
            **_cached_headers(),
            "Content-Encoding": {"description": "`gzip` when accepted and worth it.", "schema": {"const": "gzip"}},
        },
    }
    if not head:
        ok["content"] = {JSON: {"schema": _ref("AnnotationBody")}}
    responses: Schema = {
        "200": ok,
        "304": {
            "description": "`If-None-Match` names the current `ETag` (or is `*`). No body.",
            "headers": _cached_headers(),
        },
        "401": _response_ref("Unauthenticated"),
        "406": _response_ref("NotAcceptable"),
        "404": _response_ref("NotFound"),
        "412": _response_ref("PreconditionFailed"),
        "431": _response_ref("HeaderTooLarge"),
        "502": _response_ref("BadGateway"),
        "503": _response_ref("CircuitOpen"),
        "504": _response_ref("GatewayTimeout"),
    }
    if head:  # the same statuses, no bodies
        responses = {
            status: {"description": f"As for GET ({status}), without a body."} if status != "200" else ok
            for status in responses
        }
    return {
        "operationId": ("headAnnotation" if head else "getAnnotation") + suffix,
        "summary": "Get annotation by ID" + (" (headers only)" if head else ""),
        "description": "Label Studio's `GET /api/annotations/{id}/`, from the cache when it can. Served with and "
        "without the trailing slash, neither redirected.",
        "tags": ["annotations"],
        "security": [{"clientKey": []}, {}],
        "parameters": [
            {"$ref": "#/components/parameters/AnnotationId"},
            {
                "name": "expand",
                "in": "query",
                "description": "`completed_by` (alone or in a comma-separated list) renders `completed_by` as the "
                "user object; it is forwarded and cached as its own variant. Every other query parameter is "
                "ignored and never reaches Label Studio.",
                "schema": {"type": "string"},
                "example": "completed_by",
            },
            {
                "name": "If-None-Match",
                "in": "header",
                "description": "`ETag`s from earlier answers (or `*`), over one or more lines: 304 when one is "
                "still current.",
                "schema": {"type": "string"},
            },
            {
                "name": "Cache-Control",
                "in": "header",
                "description": "RFC 9111 request directives: `no-cache`, `max-age`, `min-fresh`, `max-stale`, "
                "`no-store`, `only-if-cached` (docs/freshness.md).",
                "schema": {"type": "string"},
                "example": "no-cache",
            },
            {
                "name": "Accept-Encoding",
                "in": "header",
                "description": "`gzip` (with quality values): bodies of 1 KiB and more are gzipped.",
                "schema": {"type": "string"},
            },
            {"$ref": "#/components/parameters/RequestId"},
        ],
        "responses": responses,
    }


def _annotation_write(method: str, suffix: str) -> Schema:
    return {
        "operationId": f"{method}AnnotationNotAllowed{suffix}",
        "summary": f"{method.upper()} is not allowed",
        "description": "Answered 405 whatever the key or id (it reveals nothing); never reaches Label Studio.",
        "tags": ["annotations"],
        "parameters": [{"$ref": "#/components/parameters/AnnotationIdAny"}],
        "responses": {"405": _response_ref("NotAllowed")},
    }


def _annotation_path(suffix: str) -> Schema:
    """``suffix`` keeps operation ids unique: the path is served with and without its trailing slash."""
    path: Schema = {
        "get": _annotation_get(head=False, suffix=suffix),
        "head": _annotation_get(head=True, suffix=suffix),
    }
    for method in ("post", "put", "patch", "delete", "options"):
        path[method] = _annotation_write(method, suffix)
    return path


def _purge(operation_id: str) -> Schema:
    return {
        "delete": {
            "operationId": operation_id,
            "summary": "Purge an annotation from the cache",
            "description": "Forgets every cached version, variant and remembered 404 of the id. Needs an admin key "
            "(`PROXY_ADMIN_KEYS`).",
            "tags": ["operations"],
            "security": [{"adminKey": []}],
            "parameters": [
                {"$ref": "#/components/parameters/AnnotationId"},
                {"$ref": "#/components/parameters/RequestId"},
            ],
            "responses": {
                "204": {"description": "Purged (also when nothing was cached)."},
                "401": _response_ref("Unauthenticated"),
                "403": _error("Purging is disabled: `PROXY_ADMIN_KEYS` is empty."),
                "404": _error("The id can never name an annotation."),
                "503": _error("The cache could not be reached; nothing was purged."),
            },
        }
    }


def _plain(operation_id: str, summary: str, description: str, responses: Schema, *, head: bool = True) -> Schema:
    """A GET (and aiohttp's automatic HEAD, whose answers carry no body) on a path without parameters."""
    get = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": ["operations"],
        "parameters": [{"$ref": "#/components/parameters/RequestId"}],
        "responses": responses,
    }
    path: Schema = {"get": get}
    if head:
        path["head"] = {
            **get,
            "operationId": f"{operation_id}Head",
            "summary": f"{summary} (headers only)",
            "responses": {
                status: {"description": r.get("description", f"As for GET ({status}).")}
                for status, r in responses.items()
            },
        }
    return path


def _with_request_id(response: Schema) -> Schema:
    return {**response, "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}}


def _paths() -> dict[str, Schema]:
    readiness = {"content": {JSON: {"schema": _ref("Readiness")}}}
    return {
        "/api/annotations/{id}/": _annotation_path(""),
        "/api/annotations/{id}": _annotation_path("NoSlash"),
        "/cache/annotations/{id}": _purge("purgeAnnotation"),
        "/cache/annotations/{id}/": _purge("purgeAnnotationSlash"),
        "/webhooks/label-studio": {
            "post": {
                "operationId": "labelStudioWebhook",
                "summary": "Label Studio's webhook",
                "description": "Present only when `PROXY_WEBHOOK_SECRET` is set (otherwise 404, as any unknown "
                "path). Label Studio must send the secret as `X-Webhook-Secret`. Annotation events move the "
                "id's newest known version forward; deletions answer 404 from then on.",
                "tags": ["operations"],
                "security": [{"webhookSecret": []}],
                "parameters": [{"$ref": "#/components/parameters/RequestId"}],
                "requestBody": {
                    "required": True,
                    "description": "At most `PROXY_WEBHOOK_MAX_BYTES`.",
                    "content": {JSON: {"schema": _ref("WebhookEvent")}},
                },
                "responses": {
                    "200": _with_request_id(
                        {"description": "Applied or ignored.", "content": {JSON: {"schema": _ref("WebhookResult")}}}
                    ),
                    "400": _error("A malformed body (not JSON, or not an event of the shape its action names)."),
                    "401": _error("A missing or wrong `X-Webhook-Secret`."),
                    "404": _error("Webhooks are off: `PROXY_WEBHOOK_SECRET` is not set."),
                    "408": _error(
                        "The body did not arrive within `PROXY_REQUEST_BODY_TIMEOUT`; the connection is closed."
                    ),
                    "413": _error("The body is larger than `PROXY_WEBHOOK_MAX_BYTES`."),
                    "503": _error("The cache could not apply the event; cached copies may be stale until their TTL."),
                },
            }
        },
        "/healthz": _plain(
            "healthz",
            "Liveness",
            "200 while the process runs. Checks nothing else.",
            {
                "200": _with_request_id(
                    {
                        "description": "The process runs.",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["status"],
                                    "properties": {"status": {"const": "ok"}},
                                    "additionalProperties": False,
                                }
                            }
                        },
                    }
                )
            },
        ),
        "/readyz": _plain(
            "readyz",
            "Readiness",
            "Whether this replica can serve: 503 only while it starts or shuts down. Label Studio and the cache are "
            "checked in the background every PROXY_CHECK_INTERVAL seconds; a failing one makes the answer "
            "`degraded`, still 200 (cached annotations are still served).",
            {
                "200": _with_request_id(
                    {"description": "`ready`, or `degraded` (Label Studio or the cache fails).", **readiness}
                ),
                "503": _with_request_id({"description": "`starting` or `shutting down`.", **readiness}),
            },
        ),
        "/metrics": _plain(
            "metrics",
            "Prometheus metrics",
            "Prometheus text exposition format. No label carries an annotation id. With `PROXY_METRICS_PORT` set, "
            "served by the operations listener only (404 here).",
            {
                "200": _with_request_id(
                    {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}
                ),
                "431": _response_ref("HeaderTooLarge"),
            },
        ),
        "/openapi.json": _plain(
            "openapi",
            "This document",
            "The proxy's OpenAPI document.",
            {
                "200": _with_request_id(
                    {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {"type": "object"}}}}
                )
            },
        ),
    }


def _components() -> Schema:
    annotation_id = {
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": INT64_MAX,
    }
    return {
        "schemas": _schemas(),
        "responses": _responses(),
        "parameters": {
            "AnnotationId": {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "Plain ASCII digits as sent in the path (leading zeros ignored), 1 to 2^63-1. "
                "Anything else (percent-encoded characters, signs, Unicode digits, larger numbers) is answered 404 "
                "by the proxy itself and never reaches Label Studio.",
                "schema": annotation_id,
                "example": 1,
            },
            "AnnotationIdAny": {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "Any path segment: the answer is 405 whatever it is.",
                "schema": {"type": "string", "minLength": 1},
                "example": "1",
            },
            "RequestId": {
                "name": "X-Request-ID",
                "in": "header",
                "description": "Kept when it is 1-128 characters of `A-Z a-z 0-9 . _ : -` starting with a letter or "
                "digit, else replaced by a new one. Sent to Label Studio and logged.",
                "schema": {"type": "string"},
            },
        },
        "headers": {
            "X-Request-ID": {
                "required": True,
                "description": "The request's id (the caller's, if sane, else a new one).",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"},
            },
            "Cache-Status": {
                "description": "RFC 9211: how the cache answered, e.g. `annotation-proxy; hit`, "
                "`annotation-proxy; fwd=miss; fwd-status=200; stored`.",
                "schema": {"type": "string", "pattern": "^annotation-proxy(; .+)?$"},
            },
        },
        "securitySchemes": {
            "clientKey": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Token <client key>` (what the Label Studio SDK sends for its `api_key`). Needed when "
                "`PROXY_CLIENT_KEYS` or `PROXY_CLIENT_KEYS_FILE` configures keys; otherwise callers are anonymous.",
            },
            "adminKey": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Token <admin key>`, one of `PROXY_ADMIN_KEYS`.",
            },
            "webhookSecret": {
                "type": "apiKey",
                "in": "header",
                "name": SECRET_HEADER,
                "description": "`PROXY_WEBHOOK_SECRET`, as registered with Label Studio's webhook.",
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI document, a fresh plain dict (JSON-serializable) on every call."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "annotation-proxy",
            "version": __version__,
            "summary": "A caching reverse proxy for Label Studio's Get annotation by ID.",
            "description": "Callers get Label Studio's own bytes, paths and error shapes. Any method a path does not "
            "list is answered 405 with `Allow`; any path not listed, 404. Nothing but the annotation route ever "
            "reaches Label Studio. Every error has Label Studio's shape (`Error`), except a request the HTTP parser "
            "cannot read (a malformed request line or header, a line past 8190 bytes, more than 128 headers): that is "
            "answered `400 Bad Request` in plain text before any path is matched, never quoting the request. Any "
            "HTTP version but 1.0 and 1.1 that the parser reads (2.0, 0.9) is answered `505` (`Error`) on every "
            "path.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "annotations", "description": "Label Studio's annotation endpoint, cached."},
            {"name": "operations", "description": "Health, readiness, metrics, webhooks, purging."},
        ],
        "paths": _paths(),
        "components": _components(),
    }

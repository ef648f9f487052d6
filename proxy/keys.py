"""Every typed key the proxy stores on the application, a request or a response, in one place."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.answers import Answers
from proxy.auth import ClientKeys
from proxy.budget import ByteBudget
from proxy.cache import AnnotationStore
from proxy.metrics import Metrics
from proxy.readiness import Readiness
from proxy.render import LiveBodies
from proxy.service import AnnotationService
from proxy.settings import Settings
from proxy.upstream import LabelStudioClient

# Application state, set by create_app and its cleanup contexts.
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey[AnnotationStore]("store")  # a Protocol: subscripted, not passed as a type
UPSTREAM = web.AppKey("upstream", LabelStudioClient)
SERVICE = web.AppKey("service", AnnotationService)
READINESS = web.AppKey("readiness", Readiness)
CLIENT_KEYS = web.AppKey("client_keys", ClientKeys)
ADMIN_KEYS = web.AppKey("admin_keys", ClientKeys)  # empty: purging is disabled
LIVE_BODIES = web.AppKey("live_bodies", LiveBodies)
ANSWERS = web.AppKey("answers", Answers)  # hot hits' answers, serialized (proxy/answers.py)
BODIES = web.AppKey("bodies", ByteBudget)  # the memory budget of bodies in flight (proxy/budget.py)
WEBHOOK_BODIES = web.AppKey("webhook_bodies", ByteBudget)  # webhook bodies being read and parsed
CLOCK = web.AppKey[Callable[[], float]]("clock")  # wall-clock seconds; tests move it by hand
MONOTONIC = web.AppKey[Callable[[], float]]("monotonic")  # for intervals; tests move it by hand too

# Per request: the id that ties the access log, the upstream request and the caller's logs together.
REQUEST_ID = web.RequestKey("request_id", str)
# Per request: how the cache answered an annotation lookup (proxy.metrics.CACHE_RESULTS), for the access log and
# the request duration histogram. Unset for requests that look nothing up.
CACHE_RESULT = web.RequestKey("cache_result", str)
# Per request: an error the application raised before any handler (proxy/server.py), for the edge to answer.
REFUSAL = web.RequestKey("refusal", web.HTTPException)

__all__ = [
    "ADMIN_KEYS",
    "ANSWERS",
    "BODIES",
    "CACHE_RESULT",
    "CLIENT_KEYS",
    "CLOCK",
    "LIVE_BODIES",
    "METRICS",
    "MONOTONIC",
    "READINESS",
    "REFUSAL",
    "REQUEST_ID",
    "SERVICE",
    "SETTINGS",
    "STORE",
    "UPSTREAM",
    "WEBHOOK_BODIES",
]

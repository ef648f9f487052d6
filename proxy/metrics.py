"""Prometheus metrics, all in one place, registered on a registry the caller passes in.

Naming follows Prometheus conventions: one prefix, base units (seconds), ``_total`` counters, and bounded labels
only (never an annotation id). Label values are created up front so dashboards see zeros, not gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from proxy.request_stats import RequestStats

PREFIX = "annotation_proxy"

# Every label value, once, as a type; the tuples the metrics are created with are derived from the types.
# How the cache answered an annotation request; stale_if_error: a cached copy instead of a Label Studio error.
CacheResult = Literal["hit", "miss", "stale", "stale_if_error", "negative_hit"]
# What the background dependency check watches (proxy.readiness); redis only when REDIS_URL is set.
Dependency = Literal["label_studio", "redis"]
UpstreamOutcome = Literal["ok", "not_found", "auth_rejected", "bad_status", "too_large", "timeout", "connection_error"]
CacheOperation = Literal["get", "put", "put_missing", "ping", "invalidate", "claim"]
RevalidationOutcome = Literal["unchanged", "updated", "not_found", "error"]
WebhookAction = Literal[
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED", "TASKS_DELETED", "other"
]
WebhookOutcome = Literal["applied", "ignored", "unauthorized", "invalid", "cache_error"]
Route = Literal["annotation", "webhook", "purge", "metrics", "healthz", "readyz", "openapi", "unmatched"]
TokenRefreshOutcome = Literal["ok", "rejected", "error"]

CACHE_RESULTS: tuple[CacheResult, ...] = get_args(CacheResult)
# The request duration histogram's cache label: a CACHE_RESULTS value, or none for requests that look nothing
# up (other routes, and annotation requests refused before the lookup).
REQUEST_CACHE_LABELS = (*CACHE_RESULTS, "none")
DEPENDENCIES: tuple[Dependency, ...] = get_args(Dependency)
UPSTREAM_OUTCOMES: tuple[UpstreamOutcome, ...] = get_args(UpstreamOutcome)
CACHE_OPERATIONS: tuple[CacheOperation, ...] = get_args(CacheOperation)
REVALIDATION_OUTCOMES: tuple[RevalidationOutcome, ...] = get_args(RevalidationOutcome)
WEBHOOK_ACTIONS: tuple[WebhookAction, ...] = get_args(WebhookAction)
WEBHOOK_OUTCOMES: tuple[WebhookOutcome, ...] = get_args(WebhookOutcome)
ROUTES: tuple[Route, ...] = get_args(Route)
TOKEN_REFRESH_OUTCOMES: tuple[TokenRefreshOutcome, ...] = get_args(TokenRefreshOutcome)
# (route, method, status) of the ordinary answers, created up front like every other label value.
USUAL_ANSWERS = (
    ("annotation", "GET", "200"),
    ("annotation", "GET", "304"),
    ("annotation", "GET", "404"),
    ("webhook", "POST", "200"),
    ("purge", "DELETE", "204"),
    ("metrics", "GET", "200"),
    ("healthz", "GET", "200"),
    ("readyz", "GET", "200"),
    ("readyz", "GET", "503"),
    ("openapi", "GET", "200"),
    ("unmatched", "GET", "404"),
)

# From 100 µs (a hit served from memory) to 10 s (the default upstream timeout).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    # http_requests_total, http_request_duration_seconds and cache_requests_total: counted per request, so as
    # plain numbers without a lock (proxy/request_stats.py).
    requests: RequestStats
    upstream_requests: Counter
    upstream_duration: Histogram
    token_refreshes: Counter
    coalesced_requests: Counter
    forced_fetches: Counter
    validation_failures: Counter
    cache_errors: Counter
    revalidations: Counter
    webhook_events: Counter
    cache_available: Gauge
    upstream_circuit_state: Gauge
    upstream_retries: Counter
    upstream_waiting: Gauge
    dependency_up: Gauge
    credentials_refused: Gauge
    build_info: Gauge

    @cached_property
    def upstream_outcomes(self) -> dict[str, Counter]:
        """``upstream_requests``' child counter for each outcome (:data:`UPSTREAM_OUTCOMES`), looked up once
        rather than per request (prometheus-client's ``labels()`` is a locked lookup per call)."""
        return {outcome: self.upstream_requests.labels(outcome=outcome) for outcome in UPSTREAM_OUTCOMES}

    def cache_request(self, result: CacheResult) -> None:
        """Count one annotation request by how the cache served it (one of :data:`CACHE_RESULTS`)."""
        self.requests.cache_request(result)

    def _create_label_values(self) -> None:
        """Every label value up front, so that a dashboard sees zeros and rate() works from the first scrape."""
        _ = self.upstream_outcomes  # upstream_requests' children, made here and kept for the exchange
        for counter, label, values in (
            (self.token_refreshes, "outcome", TOKEN_REFRESH_OUTCOMES),
            (self.cache_errors, "operation", CACHE_OPERATIONS),
            (self.revalidations, "outcome", REVALIDATION_OUTCOMES),
        ):
            for value in values:
                counter.labels(**{label: value})
        for action in WEBHOOK_ACTIONS:
            for webhook_outcome in WEBHOOK_OUTCOMES:
                self.webhook_events.labels(action=action, outcome=webhook_outcome)
        # The status label is open (any status a route answers); its usual values exist from the start.
        self.requests.create(
            ((route, method, int(status)) for route, method, status in USUAL_ANSWERS),
            (
                (route, cache)
                for route in ROUTES
                for cache in (REQUEST_CACHE_LABELS if route == "annotation" else ("none",))
            ),
            CACHE_RESULTS,
        )

    @classmethod
    def create(cls, registry: CollectorRegistry, *, version: str, process_metrics: bool = True) -> Metrics:
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        metrics = cls(**_families(registry))
        metrics.build_info.labels(version=version).set(1)
        metrics.cache_available.set(1)
        metrics._create_label_values()
        return metrics


def _families(registry: CollectorRegistry) -> dict[str, Any]:
    """Every metric family, registered on ``registry``, by the :class:`Metrics` field that holds it."""
    requests = RequestStats(PREFIX, LATENCY_BUCKETS)
    registry.register(requests)
    return dict(
        registry=registry,
        requests=requests,
        upstream_requests=Counter(
            f"{PREFIX}_upstream_requests",
            "Requests the proxy sent to Label Studio for annotations, by outcome.",
            ["outcome"],
            registry=registry,
        ),
        upstream_duration=Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Time to get a complete annotation response from Label Studio.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        token_refreshes=Counter(
            f"{PREFIX}_token_refreshes",
            "Exchanges of the personal access token for an access token, by outcome.",
            ["outcome"],
            registry=registry,
        ),
        coalesced_requests=Counter(
            f"{PREFIX}_coalesced_requests",
            "Annotation requests that waited for another request's upstream fetch.",
            registry=registry,
        ),
        forced_fetches=Counter(
            f"{PREFIX}_forced_fetches",
            "Annotation requests whose Cache-Control refused a cached answer the proxy would have served "
            "(no-cache, max-age, min-fresh, max-stale), so it asked Label Studio first.",
            registry=registry,
        ),
        validation_failures=Counter(
            f"{PREFIX}_validation_failures",
            "Upstream bodies rejected by validation (never served, never cached).",
            registry=registry,
        ),
        cache_errors=Counter(
            f"{PREFIX}_cache_errors",
            "Cache store failures; each is served as if it were a miss.",
            ["operation"],
            registry=registry,
        ),
        revalidations=Counter(
            f"{PREFIX}_revalidations",
            "Background re-fetches of a stale or invalidated version, by outcome.",
            ["outcome"],
            registry=registry,
        ),
        webhook_events=Counter(
            f"{PREFIX}_webhook_events",
            "Label Studio webhook deliveries, by action and what the proxy did with them.",
            ["action", "outcome"],
            registry=registry,
        ),
        cache_available=Gauge(
            f"{PREFIX}_cache_available",
            "1 while the cache is used; 0 while its circuit breaker is open (requests go to Label Studio).",
            registry=registry,
        ),
        upstream_circuit_state=Gauge(
            f"{PREFIX}_upstream_circuit_state",
            "1 for the current state of the circuit breaker in front of Label Studio, 0 for the others.",
            ["state"],
            registry=registry,
        ),
        upstream_retries=Counter(
            f"{PREFIX}_upstream_retries",
            "Upstream requests sent again after a connection error or a 502/503/504.",
            registry=registry,
        ),
        upstream_waiting=Gauge(
            f"{PREFIX}_upstream_waiting",
            "Requests waiting for one of the PROXY_UPSTREAM_MAX_CONNECTIONS slots to Label Studio.",
            registry=registry,
        ),
        dependency_up=Gauge(
            f"{PREFIX}_dependency_up",
            "1 if the last background check of the dependency passed, 0 if it failed (PROXY_CHECK_INTERVAL).",
            ["dependency"],
            registry=registry,
        ),
        credentials_refused=Gauge(
            f"{PREFIX}_label_studio_credentials_refused",
            "1 if Label Studio refused the proxy's credentials at the last background check, else 0.",
            registry=registry,
        ),
        build_info=Gauge(
            f"{PREFIX}_build_info",
            "Always 1; the proxy's version as a label.",
            ["version"],
            registry=registry,
        ),
    )

"""The proxy's exceptions: one tree, each error knowing the HTTP status and detail a caller sees.

Third-party exceptions (aiohttp, redis, pydantic) are translated into these once, at the adapter that calls the
library, with ``raise ... from exc``. Only :mod:`proxy.routes` turns them into responses. A ``detail`` is written
for the caller: it never carries a token, a URL with credentials or an upstream body.
"""

from __future__ import annotations

import copy


class ConfigError(Exception):
    """The configuration cannot work. The message is one line, safe to print."""


class ProxyError(Exception):
    """Base of every error that becomes an HTTP response."""

    status: int = 500
    detail: str = "Internal server error."

    def __init__(self, detail: str | None = None) -> None:
        if detail is not None:
            self.detail = detail
        super().__init__(self.detail)


# Caller-side errors


class NotAuthenticated(ProxyError):
    status = 401
    detail = "Authentication credentials were not provided."


class InvalidClientKey(NotAuthenticated):
    detail = "Invalid token."


class BadWebhook(ProxyError):
    status = 400
    detail = "Malformed webhook body."


class WrongWebhookSecret(ProxyError):
    status = 401
    detail = "Missing or wrong X-Webhook-Secret."


class PurgeDisabled(ProxyError):
    status = 403
    detail = "Purging is disabled: no PROXY_ADMIN_KEYS are configured."


class ServiceUnavailable(ProxyError):
    status = 503
    detail = "Service unavailable."


class ProxyBusy(ServiceUnavailable):
    """Label Studio answered, but the proxy had no room in its memory budget for the body before the deadline."""

    detail = "The proxy is busy with other large annotations; try again."


class AnnotationNotFound(ProxyError):
    """The annotation does not exist, or the id can never name one."""

    status = 404
    detail = "No Annotation matches the given query."


class NotCached(ProxyError):
    """``Cache-Control: only-if-cached``, and nothing usable is cached (RFC 9111 5.2.1.7)."""

    status = 504
    detail = "Not in the cache, and the request said only-if-cached."


class NotAcceptable(ProxyError):
    """The ``Accept`` header names nothing Label Studio renders (as Label Studio answers it)."""

    status = 406
    detail = "Could not satisfy the request Accept header."


class PreconditionFailed(ProxyError):
    """``If-Match`` names no current tag of the annotation (RFC 9110 13.1.1): the proxy's tags are weak, so only
    ``If-Match: *`` holds."""

    status = 412
    detail = "Precondition failed: If-Match names no current entity tag (the proxy's tags are weak)."


# Upstream errors: Label Studio could not give us a valid annotation.


class UpstreamError(ProxyError):
    """Label Studio failed to answer usefully. ``cache_status`` describes the forward for ``Cache-Status``."""

    status = 502
    detail = "Label Studio returned an unexpected response."
    outcome = "error"  # the ``outcome`` label of annotation_proxy_upstream_requests_total
    fwd = "miss"  # Cache-Status's fwd: why the proxy asked Label Studio

    def __init__(self, detail: str | None = None, *, upstream_status: int | None = None) -> None:
        super().__init__(detail)
        self.upstream_status = upstream_status

    def forwarded(self, fwd: str) -> UpstreamError:
        """This failure as the answer to a request whose fetch was made for ``fwd``'s reason (``miss``: nothing was
        cached; ``request``: the request's directives forced it; ``stale``: what was cached was stale): a copy,
        since one failure may answer other requests, made for other reasons, too."""
        answer = copy.copy(self)
        answer.fwd = fwd
        return answer


class UpstreamTimeout(UpstreamError):
    status = 504
    detail = "Label Studio did not answer in time."
    outcome = "timeout"


class UpstreamQueueTimeout(UpstreamTimeout):
    """The request waited for one of the proxy's connections to Label Studio (``PROXY_UPSTREAM_MAX_CONNECTIONS``,
    all busy) until its deadline, or until less was left than Label Studio has been taking: never sent, so it
    says nothing of Label Studio's health."""

    status = 503
    detail = "Every connection to Label Studio was busy until too little of the request's deadline was left; try again."
    outcome = "queue_timeout"  # Cache-Status and the log only: nothing was sent, so no upstream request is counted


class UpstreamUnavailable(UpstreamError):
    status = 502
    detail = "Label Studio could not be reached."
    outcome = "connection_error"


class TokenRefreshFailed(UpstreamUnavailable):
    """Label Studio's token refresh gave no access token (no answer, a 5xx, an answer without one): Label Studio as
    a whole is unwell, not one annotation. Counted by the breaker once per exchange: ``repeated`` marks the copy
    that requests get while the proxy waits before exchanging again (proxy/credentials.py)."""

    detail = "Label Studio's token refresh failed."
    outcome = "token_refresh_failed"
    repeated = False


class UpstreamCircuitOpen(UpstreamUnavailable):
    """Label Studio kept failing: the proxy is not calling it for a few seconds (its circuit breaker is open)."""

    status = 503
    detail = "Label Studio is failing; the proxy has stopped calling it for a few seconds."
    outcome = "circuit_open"


class UpstreamAuthRejected(UpstreamError):
    """Label Studio refused the proxy's own credentials: an operator must fix the configuration."""

    status = 502
    detail = "The proxy is misconfigured: Label Studio rejected its credentials. Operators: check LABEL_STUDIO_API_KEY."
    outcome = "auth_rejected"


# Answers that say Label Studio as a whole is unwell (a gateway, an overload), not one annotation: retried, and
# counted by the breaker as such (proxy/upstream.py), never remembered for one id (proxy/fetcher.py).
GATEWAY_STATUSES = frozenset({502, 503, 504})


class UpstreamBadStatus(UpstreamError):
    outcome = "bad_status"


class InvalidUpstreamBody(UpstreamError):
    """The body failed validation: never served, never cached."""

    outcome = "invalid_body"


class CacheError(Exception):
    """The cache store failed. Never reaches a caller: the service treats it as a miss (fail open)."""


class CacheCircuitOpen(CacheError):
    """The cache's circuit breaker is open: the operation was not even sent to Redis."""


class CacheBusy(CacheError):
    """The cache could not answer for one annotation just now, for a reason that says nothing new of Redis's health:
    its Redis Cluster slot is moving between nodes (resharding), the memory budget had no room for a large entry,
    or the connection its call was batched on failed, which the batch's first call counts
    (proxy/cache/batching.py). So the circuit breaker does not count it against the cache."""

"""Readiness for ``/readyz``: does Label Studio accept the proxy's credentials, and does the cache answer?

Ready means the proxy can answer: Label Studio must answer. The cache only makes answers cheaper: when it fails
the proxy is *degraded* (still ready: it serves from Label Studio, and a failing Redis must not take every replica
out of service at once). While shutting down the proxy is not ready, so load balancers stop sending requests.

``/readyz`` needs no key, so anyone who reaches the port may call it as often as they like. The checks are
therefore shared: one runs at a time, and its report is reused for ``interval`` seconds, so probes cost Label
Studio at most one request per interval however many arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.cache import AnnotationStore
from proxy.errors import CacheError, ProxyError, UpstreamAuthRejected
from proxy.metrics import Metrics

CHECK_TIMEOUT = 5.0
REPORT_INTERVAL = 2.0


class CredentialCheck(Protocol):
    async def check_credentials(self, request_id: str) -> None: ...


@dataclass(frozen=True)
class Report:
    status: str  # "ready", "degraded" (ready, but the cache fails), "not ready" or "shutting down"
    checks: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status in ("ready", "degraded")

    def body(self) -> dict[str, Any]:
        return {"status": self.status, "checks": self.checks}


def _why(error: BaseException) -> str:
    if isinstance(error, UpstreamAuthRejected):
        return "Label Studio rejected the proxy's credentials (check LABEL_STUDIO_API_KEY)"
    if isinstance(error, ProxyError):
        return error.detail
    if isinstance(error, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:g} s"
    return str(error) or type(error).__name__


class Readiness:
    def __init__(
        self,
        store: AnnotationStore,
        upstream: CredentialCheck,
        metrics: Metrics,
        *,
        interval: float = REPORT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._metrics = metrics
        self._interval = interval
        self._clock = clock
        self._last: tuple[float, Report] | None = None
        self._running: asyncio.Task[Report] | None = None
        self._shutting_down = False

    def shutting_down(self) -> None:
        """From now on, not ready: the process is stopping."""
        self._shutting_down = True

    async def report(self, request_id: str) -> Report:
        if self._shutting_down:
            return Report("shutting down")
        if self._last is not None and self._clock() - self._last[0] < self._interval:
            return self._last[1]
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._check(request_id))
        return await asyncio.shield(self._running)  # a prober that hangs up does not cancel the others' check

    async def _check(self, request_id: str) -> Report:
        async def cache() -> None:
            try:
                await self._store.ping()
            except CacheError:
                self._metrics.cache_errors.labels(operation="ping").inc()
                raise

        results = await asyncio.gather(
            asyncio.wait_for(cache(), CHECK_TIMEOUT),
            asyncio.wait_for(self._upstream.check_credentials(request_id), CHECK_TIMEOUT),
            return_exceptions=True,
        )
        checks: dict[str, dict[str, str]] = {}
        for name, result in zip(("cache", "label_studio"), results, strict=True):
            if isinstance(result, BaseException):
                checks[name] = {"status": "failing", "error": _why(result)}
            else:
                checks[name] = {"status": "ok"}
        checks["cache"]["backend"] = self._store.name
        if checks["label_studio"]["status"] != "ok":
            status = "not ready"
        elif checks["cache"]["status"] != "ok":
            status = "degraded"
        else:
            status = "ready"
        report = Report(status, checks)
        self._last = (self._clock(), report)
        return report

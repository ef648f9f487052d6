"""Readiness for ``/readyz``: does the cache answer, and does Label Studio accept the proxy's credentials?

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
    ready: bool
    checks: dict[str, dict[str, str]] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"status": "ready" if self.ready else "not ready", "checks": self.checks}


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

    async def report(self, request_id: str) -> Report:
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
        report = Report(all(c["status"] == "ok" for c in checks.values()), checks)
        self._last = (self._clock(), report)
        return report

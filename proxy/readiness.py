"""Readiness (``/readyz``) and the background checks of the proxy's dependencies.

Readiness says whether *this replica* can serve, not whether a shared dependency is healthy. A Label Studio
that does not answer, or refuses the proxy's credentials, and a failing Redis hit every replica alike: taking
them all out of service at once would turn an outage that the cache hides (hits, stale-if-error copies) into
connection errors for every caller. So ``/readyz`` is 503 only while the process is starting or shutting down;
otherwise 200, ``ready`` or ``degraded`` with the failing checks named.

The checks run in the background every ``interval`` seconds (``PROXY_CHECK_INTERVAL``), not per probe: probes
cost nothing and can come as often as anyone likes, and the gauges ``annotation_proxy_dependency_up`` and
``annotation_proxy_label_studio_credentials_refused`` stay current with nobody probing. Alerts read those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from proxy.cache import AnnotationStore
from proxy.errors import CacheError, ProxyError, UpstreamAuthRejected
from proxy.metrics import Metrics

log = logging.getLogger("proxy.readiness")

CHECK_TIMEOUT = 5.0
PROBE_REQUEST_ID = "readiness-check"

Status = Literal["starting", "ready", "degraded", "shutting down"]


class CredentialCheck(Protocol):
    async def check_credentials(self, request_id: str) -> None: ...


@dataclass(frozen=True)
class Report:
    status: Status
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


PENDING = {"status": "pending"}


async def failure_of(check: Awaitable[None]) -> Exception | None:
    """What made ``check`` fail within :data:`CHECK_TIMEOUT`, or None if it passed."""
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure is the check's answer
        return exc
    return None


def _failing(checks: dict[str, dict[str, str]]) -> set[str]:
    return {name for name, check in checks.items() if check["status"] == "failing"}


def as_check(failure: Exception | None) -> dict[str, str]:
    return {"status": "ok"} if failure is None else {"status": "failing", "error": _why(failure)}


class Readiness:
    """The replica's state (starting, serving, shutting down) and the last result of each dependency check."""

    def __init__(self, metrics: Metrics, *, backend: str, interval: float) -> None:
        self._metrics = metrics
        self._backend = backend
        self._interval = interval
        self._store: AnnotationStore | None = None
        self._upstream: CredentialCheck | None = None
        self._state: Literal["starting", "serving", "shutting down"] = "starting"
        self._checks: dict[str, dict[str, str]] = {
            "cache": {**PENDING, "backend": backend},
            "label_studio": dict(PENDING),
        }
        self._task: asyncio.Task[None] | None = None

    def start(self, store: AnnotationStore, upstream: CredentialCheck) -> None:
        """The store and the upstream client are set up: this replica can serve. Checks start now, then run
        every ``interval`` seconds until :meth:`close`."""
        self._store, self._upstream = store, upstream
        self._state = "serving"
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dependency-checks")

    def shutting_down(self) -> None:
        """From now on, not ready: the process is stopping."""
        self._state = "shutting down"

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def report(self) -> Report:
        if self._state != "serving":
            return Report("starting" if self._state == "starting" else "shutting down", self._checks)
        return Report("degraded" if _failing(self._checks) else "ready", self._checks)

    async def check(self) -> None:
        """Run both checks once, and publish the result (report, gauges, a log line on each change)."""
        if self._store is None or self._upstream is None:
            raise RuntimeError("Readiness.check() before start()")
        cache, label_studio = await asyncio.gather(
            failure_of(self._ping(self._store)), failure_of(self._upstream.check_credentials(PROBE_REQUEST_ID))
        )
        before = self._checks
        self._checks = {
            "cache": {**as_check(cache), "backend": self._backend},
            "label_studio": as_check(label_studio),
        }
        up = self._metrics.dependency_up
        up.labels(dependency="label_studio").set(0 if label_studio else 1)
        self._metrics.credentials_refused.set(1 if isinstance(label_studio, UpstreamAuthRejected) else 0)
        if self._backend == "redis":
            up.labels(dependency="redis").set(0 if cache else 1)
        self._log_changes(before)

    async def _ping(self, store: AnnotationStore) -> None:
        try:
            await store.ping()
        except CacheError:
            self._metrics.cache_errors.labels(operation="ping").inc()
            raise

    def _log_changes(self, before: dict[str, dict[str, str]]) -> None:
        """One line for each check that started or stopped failing since ``before``."""
        failing, failed = _failing(self._checks), _failing(before)
        for name in sorted(failing - failed):
            log.warning("dependency check failing", extra={"check": name, "error": self._checks[name]["error"]})
        for name in sorted(failed - failing):
            log.info("dependency check passing again", extra={"check": name})

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # pragma: no cover - a bug in the check must not end the checking
                log.exception("dependency check crashed")
            await asyncio.sleep(self._interval)

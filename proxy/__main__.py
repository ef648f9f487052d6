"""``annotation-proxy`` / ``python -m proxy``: read the settings, log them (masked), serve."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

try:
    import uvloop
except ImportError:  # pragma: no cover - a platform without uvloop (Windows)
    uvloop = None  # type: ignore[assignment]

from proxy import __version__
from proxy.app import create_app
from proxy.budget import MiB, container_memory_limit
from proxy.errors import ConfigError
from proxy.logs import configure_logging
from proxy.server import serve
from proxy.settings import load_settings

log = logging.getLogger("proxy")


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (Linux and macOS): sockets and scheduling in C, which is most of
    a cache hit's cost (docs/performance.md)."""
    return asyncio.new_event_loop() if uvloop is None else uvloop.new_event_loop()


def freeze_start_up() -> None:
    """Take what start-up built (modules, settings, the application) out of the cyclic collector's sight: its
    full collections no longer walk them. The collection thresholds stay CPython's: a first generation of 20,000
    instead of 700 held cycles with large bodies long enough to overrun the memory budget (docs/performance-log.md)."""
    gc.collect()
    gc.freeze()


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"annotation-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.proxy_log_level)
    budget = settings.memory_budget()
    log.info(
        "starting annotation-proxy",
        extra={"version": __version__, "config": settings.redacted(), "memory_budget_mib": budget.in_mib()},
    )
    limit = container_memory_limit()
    if limit is not None and budget.total > limit:
        log.warning(
            "the memory budget is larger than the container's memory limit: lower the byte bounds or raise the limit",
            extra={"memory_budget_mib": budget.in_mib()["total"], "container_limit_mib": limit // MiB},
        )
    app = create_app(settings)
    freeze_start_up()
    try:
        serve(
            app,
            host=settings.proxy_host,
            port=settings.proxy_port,
            shutdown_timeout=settings.proxy_shutdown_timeout,
            loop=event_loop(),
        )
    except OSError as exc:
        log.exception(
            "cannot listen",
            extra={
                "host": settings.proxy_host,
                "port": settings.proxy_port,
                "metrics_port": settings.proxy_metrics_port,
                "error": str(exc),
            },
        )
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

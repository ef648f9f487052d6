"""The operations listener (``PROXY_METRICS_PORT``): ``/metrics``, ``/healthz`` and ``/readyz``, nothing else.

A sidecar listens on loopback, where Prometheus and the kubelet cannot reach it; this second listener (on
``PROXY_METRICS_HOST``, all addresses by default) lets them, without opening the annotation path. It is an
application of its own, with only those three routes: no annotation is served or fetched through it, and every
other path is a 404 in Label Studio's error shape. It shares the main application's metrics and readiness.

It starts before the main application sets up its store and upstream client, so it answers ``/readyz`` with
503 ``starting`` until the replica can serve, and stops after the main application has drained.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.edge import add_fallbacks
from proxy.keys import METRICS, READINESS, SETTINGS
from proxy.routes import add_operations_routes
from proxy.server import ProxyRunner

log = logging.getLogger("proxy.ops_listener")


def create_ops_app(app: web.Application) -> web.Application:
    """The operations routes of ``app`` (its settings, metrics and readiness), as an application of their own."""
    ops = web.Application()
    ops[SETTINGS] = app[SETTINGS]
    ops[METRICS] = app[METRICS]
    ops[READINESS] = app[READINESS]
    add_operations_routes(ops)
    add_fallbacks(ops)
    return ops


# Seconds a scrape or a probe in flight at shutdown gets to finish: each answers in milliseconds, and this listener
# stops only after the main one has drained, within the orchestrator's grace period (PROXY_SHUTDOWN_TIMEOUT).
OPS_DRAIN = 1.0


def ops_runner(app: web.Application) -> web.AppRunner:
    """The listener's runner: the main listener's (:class:`proxy.server.ProxyRunner`), so that idle connections
    close after the same 75 s and a request-target no route can match gets the edge's 404."""
    return ProxyRunner(create_ops_app(app), annotations=False, access_log=None, handle_signals=False, drain=OPS_DRAIN)


async def ops_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: listen on PROXY_METRICS_HOST:PROXY_METRICS_PORT while ``app`` runs (none if unset)."""
    settings = app[SETTINGS]
    if settings.proxy_metrics_port is None:
        yield
        return
    runner = ops_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.proxy_metrics_host, settings.proxy_metrics_port).start()
        log.info(
            "operations listener: /metrics, /healthz, /readyz",
            extra={"host": settings.proxy_metrics_host, "port": settings.proxy_metrics_port},
        )
        yield
    finally:
        await runner.cleanup()

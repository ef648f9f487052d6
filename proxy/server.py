"""The main listener: the application behind a front door that sends annotation reads straight to their handler.

aiohttp's ``Application`` resolves every request through its router and builds match info for it before the
handler runs; for a cache hit that was about 10 us of 65 (docs/performance-log.md). :class:`FrontDoor` is the
handler of aiohttp's low-level server under the application: ``GET`` and ``HEAD`` on
``/api/annotations/<id>/`` (the path as sent, one segment after the prefix, an optional slash) go to the
annotation route's own handler, everything else to the application as before. The annotation handler reads
nothing the router would have given it (the id comes from the raw path, the services from the application), so
both ways answer alike; every other route, the lifecycle (cleanup contexts, ``on_shutdown``) and the request body
limit stay the application's.

:class:`ProxyRunner` is ``web.AppRunner`` with the front door in place; :func:`serve` runs it the way
``web.run_app`` would (signals, graceful shutdown), which cannot take another runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any

from aiohttp import hdrs, web

from proxy.edge import UNMATCHED
from proxy.keys import REFUSAL
from proxy.paths import PathMemo

ANNOTATIONS = "/api/annotations/"
FAST_METHODS = frozenset({hdrs.METH_GET, hdrs.METH_HEAD})
ANNOTATION_ROUTE_NAME = "annotation"
# An idle keep-alive connection is closed after this many seconds: web.run_app's value (aiohttp's own server
# default is an hour, which lets any caller hold idle sockets open).
KEEPALIVE_TIMEOUT = 75.0


@PathMemo
def is_annotation_path(raw_path: str) -> bool:
    """``/api/annotations/<segment>`` or ``.../<segment>/``, a query allowed: what the annotation route matches."""
    if not raw_path.startswith(ANNOTATIONS):
        return False
    rest = raw_path[len(ANNOTATIONS) :].partition("?")[0].partition("#")[0]
    segment = rest[:-1] if rest.endswith("/") else rest
    return bool(segment) and "/" not in segment


class RouterDoor:
    """The low-level server's request handler for an application without the annotation route (the operations
    listener's): everything through the router, and what the application refuses before any handler answered by
    the edge."""

    def __init__(self, app: web.Application, application: Any) -> None:
        self._application = application  # what aiohttp's AppRunner serves: the router, then the handler
        # The edge's handler of what no route serves (proxy/edge.py), which answers a REFUSAL too.
        self._unmatched = next(route.handler for route in app.router[UNMATCHED])

    def __call__(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        return self._through_router(request)

    async def _through_router(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await self._application(request)
        except web.HTTPException as exc:
            # Every route's handler is the edge's, which answers its own errors (proxy/edge.py), so what is raised
            # here came before any handler: the router's 404 for a request-target no route can match ("*",
            # "host:443", an absolute URL without a path), or the application's 417 for an Expect other than
            # 100-continue on HTTP/1.1. The edge answers them here, as every other error: in Label Studio's shape,
            # with a request id and no-store, counted and logged as unmatched (aiohttp's own answer is plain text).
            if exc.status < 400:
                raise
            request[REFUSAL] = exc
            response = await self._unmatched(request)  # type: ignore[arg-type]  # the app's: a web.Request
        return response


class FrontDoor(RouterDoor):
    """The main listener's request handler: annotation reads to their route's handler, the rest to the
    application's. A request with ``Expect`` goes through the application, which answers it (100 or 417)."""

    def __init__(self, app: web.Application, application: Any) -> None:
        super().__init__(app, application)
        self._annotation = next(
            route.handler for route in app.router[ANNOTATION_ROUTE_NAME] if route.method == hdrs.METH_GET
        )

    def __call__(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """The handler's coroutine itself, for aiohttp to await: no coroutine of its own in between."""
        if (
            request.method in FAST_METHODS
            and is_annotation_path(request.raw_path)
            and hdrs.EXPECT not in request.headers
        ):
            return self._annotation(request)  # type: ignore[arg-type]  # it reads no match info
        return self._through_router(request)


def aiohttp_shutdown_timeout(drain: float) -> float:
    """The ``shutdown_timeout`` that gives requests in flight ``drain`` seconds in all, no more.

    aiohttp waits that long for them, then cancels what they read (a handler goes on) and waits as long again,
    then cancels the handlers; a wait over 5 s ends at the next whole second of the loop's clock. Given the drain
    itself, shutting down took up to twice as long as PROXY_SHUTDOWN_TIMEOUT said (a helper review measured 6 s
    for 3), past the grace period the shipped compose file allows for 10.
    """
    half = drain / 2
    return half - 1 if half > 5 else half


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` whose server hands requests to a :class:`FrontDoor` first (a :class:`RouterDoor` when
    ``annotations`` is false: the operations listener's application has no annotation route), idle connections
    closed after :data:`KEEPALIVE_TIMEOUT` unless told otherwise, requests in flight at shutdown given ``drain``
    seconds in all."""

    def __init__(self, app: web.Application, *, annotations: bool = True, drain: float = 60.0, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT)
        super().__init__(app, shutdown_timeout=aiohttp_shutdown_timeout(drain), **kwargs)
        self._door = FrontDoor if annotations else RouterDoor

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.request_handler = self._door(self.app, server.request_handler)
        return server


def serve(
    app: web.Application, *, host: str, port: int, shutdown_timeout: float, loop: asyncio.AbstractEventLoop
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, as ``web.run_app`` does: stop listening, run ``on_shutdown``, let
    requests in flight finish within ``shutdown_timeout``, close the cleanup contexts, close the loop. OSError
    when the address cannot be listened on."""
    runner = ProxyRunner(app, handle_signals=True, access_log=None, drain=shutdown_timeout)

    async def run() -> None:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    main = loop.create_task(run())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():  # a second signal during the cleanup ends it, and the loop still closes
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            loop.run_until_complete(_cancel_the_rest())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _cancel_the_rest() -> None:
    """Cancel the tasks still running after the cleanup (none, normally) and let them end."""
    left = asyncio.all_tasks() - {asyncio.current_task()}
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)

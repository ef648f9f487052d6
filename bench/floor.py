"""The floors the benchmark (bench/run.py) sets beside the proxy: two servers between aiohttp's web.Application and
the limit, for the hit rows, and the least a proxy on aiohttp does for a miss, for the cold rows.

    PYTHONPATH=. python bench/floor.py --port 8082 --kind lowlevel|httptools
    PYTHONPATH=. python bench/floor.py --port 8082 --kind passthrough --upstream http://127.0.0.1:8081

All run on uvloop and answer ``GET /health`` with ``{"status": "UP"}``. The first two answer every other path with
the 855-byte body of annotation 1 (bench/upstream.py):

    lowlevel     aiohttp's low-level server: ``web.Server`` with one handler, through ``web.ServerRunner`` and
                 ``web.TCPSite`` (no application, no router, no middlewares, no signals)
    httptools    an asyncio Protocol that parses requests with ``httptools.HttpRequestParser`` and writes one fixed,
                 prebuilt response per request (keep-alive; pipelined requests are answered in order)
    passthrough  an aiohttp ``web.Application`` with one route, ``GET /api/annotations/{id}/``, that asks
                 ``--upstream`` for the same path with the fake's token over one ``ClientSession`` (keep-alive, no
                 cookies) and answers its status and body: aiohttp's server and client, and nothing of a cache's
                 (no key, no validation, no store, no metrics, no log), as the proxy's cold misses use them
"""

from __future__ import annotations

import argparse
import asyncio
from email.utils import formatdate
from typing import cast

import aiohttp
import httptools
import uvloop
from aiohttp import web

from bench.upstream import LEGACY_TOKEN, body_for

BODY = body_for(1)
HEALTH = b'{"status":"UP"}'
CONTENT_TYPE = "application/json"


# --- aiohttp's low-level server -------------------------------------------------------------------------------------


async def lowlevel_handler(request: web.BaseRequest) -> web.Response:
    body = HEALTH if request.path == "/health" else BODY
    return web.Response(body=body, content_type=CONTENT_TYPE)


async def serve_until_stopped(runner: web.BaseRunner, port: int) -> None:
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def serve_lowlevel(port: int) -> None:
    await serve_until_stopped(web.ServerRunner(web.Server(lowlevel_handler, access_log=None)), port)


# --- httptools on a bare Protocol -----------------------------------------------------------------------------------


def prebuilt(body: bytes) -> bytes:
    """A whole HTTP/1.1 200 response with the headers aiohttp sends (its Date fixed at start-up)."""
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        "Server: bench-floor\r\n\r\n"
    )
    return head.encode() + body


class FixedResponse(asyncio.Protocol):
    """One connection: every complete request gets the prebuilt response, in the order the requests came."""

    def __init__(self, annotation: bytes, health: bytes) -> None:
        self.annotation, self.health = annotation, health
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()

    # httptools' callbacks

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url  # may come in pieces

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        self.transport.write(self.health if self.url == b"/health" else self.annotation)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve_httptools(port: int) -> None:
    annotation, health = prebuilt(BODY), prebuilt(HEALTH)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FixedResponse(annotation, health), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# --- aiohttp's client behind aiohttp's application: the cold rows' floor ------------------------------------------


async def serve_passthrough(port: int, upstream: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        authorization = {"Authorization": f"Token {LEGACY_TOKEN}"}

        async def annotation(request: web.Request) -> web.Response:
            async with session.get(upstream + request.path, headers=authorization) as answer:
                body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type=CONTENT_TYPE)

        async def health(request: web.Request) -> web.Response:
            return web.Response(body=HEALTH, content_type=CONTENT_TYPE)

        app = web.Application()
        app.router.add_get("/api/annotations/{id}/", annotation)
        app.router.add_get("/health", health)
        await serve_until_stopped(web.AppRunner(app, access_log=None), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=("lowlevel", "httptools", "passthrough"), required=True)
    parser.add_argument("--upstream", help="passthrough: the upstream's base URL, as http://127.0.0.1:8081")
    args = parser.parse_args()
    if args.kind == "passthrough":
        if not args.upstream:
            parser.error("--kind passthrough needs --upstream")
        uvloop.run(serve_passthrough(args.port, args.upstream.rstrip("/")))
    else:
        uvloop.run((serve_lowlevel if args.kind == "lowlevel" else serve_httptools)(args.port))


if __name__ == "__main__":
    main()

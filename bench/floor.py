"""Two servers between aiohttp's web.Application and the limit, for the reference rows of the benchmark (bench/run.py).

    PYTHONPATH=. python bench/floor.py --port 8082 --kind lowlevel|httptools

Both run on uvloop and answer every path with the 855-byte body of annotation 1 (bench/upstream.py), except
``GET /health``, which answers ``{"status": "UP"}``:

    lowlevel   aiohttp's low-level server: ``web.Server`` with one handler, through ``web.ServerRunner`` and
               ``web.TCPSite`` (no application, no router, no middlewares, no signals)
    httptools  an asyncio Protocol that parses requests with ``httptools.HttpRequestParser`` and writes one fixed,
               prebuilt response per request (keep-alive; pipelined requests are answered in order)
"""

from __future__ import annotations

import argparse
import asyncio
from email.utils import formatdate
from typing import cast

import httptools
import uvloop
from aiohttp import web

from bench.upstream import body_for

BODY = body_for(1)
HEALTH = b'{"status":"UP"}'
CONTENT_TYPE = "application/json"


# --- aiohttp's low-level server -------------------------------------------------------------------------------------


async def lowlevel_handler(request: web.BaseRequest) -> web.Response:
    body = HEALTH if request.path == "/health" else BODY
    return web.Response(body=body, content_type=CONTENT_TYPE)


async def serve_lowlevel(port: int) -> None:
    runner = web.ServerRunner(web.Server(lowlevel_handler, access_log=None))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=("lowlevel", "httptools"), required=True)
    args = parser.parse_args()
    serve = serve_lowlevel if args.kind == "lowlevel" else serve_httptools
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()

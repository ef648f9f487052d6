"""Where a cache hit's CPU goes, part by part: the proxy's own work per hit, each part run alone in this process.

    PYTHONPATH=. python bench/hit_costs.py [--hits 20000] [--json]      (make bench runs it)

The proxy is built as ``python -m proxy`` builds it (``create_app`` with default settings, its cleanup contexts
run, the access log configured as in production), with the in-process store, in front of the bench's fake
upstream (bench/upstream.py, in its own process on CPU 0). Its 100 hot ids are fetched until they are hits.
Then each part is timed on requests built in this process (aiohttp's ``make_mocked_request``) whose transport
only counts bytes, so what is timed is the proxy's own Python and none of aiohttp's server, the event loop or the
``write`` system call. This process runs on CPU 1, on uvloop. The parts take turns, a run of each, seven times,
so that a host whose speed drifts within seconds moves them alike (with each part's seven runs one after
another, the write, worked out as a difference, once came out below zero); each figure is the median of the
seven runs (the write's, of the seven runs' differences), in CPU microseconds per hit:

    own work      everything the proxy runs for a hit: its front door, the edge, the handler, the direct write
                  (to the counting transport) and the access line (formatted and flushed to a stream that drops it)
    handler       the annotation route's handler alone: the key, the id, the hot tier, the headers, the body
    write         the answer serialized and handed to the transport (``DirectResponse.prepare``): the handler
                  followed by it, less the handler alone
    access line   the line recorded, formatted and flushed, alone

What a hit costs besides its own work (aiohttp's server, uvloop, the system calls) is the bench's hit row (b)
less the own work; what the edge costs besides the access line is the own work less the other three parts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Awaitable, Callable, Mapping
from contextlib import ExitStack
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry

from bench.run import CLIENT_KEY, HOT_IDS, cpu_seconds, fake_upstream_beside, on_the_proxy_cpu, warm_hits
from bench.upstream import LEGACY_TOKEN
from proxy.__main__ import freeze_start_up
from proxy.app import create_app
from proxy.logs import ACCESS_LOG, configure_logging
from proxy.routes import AnnotationRoute
from proxy.server import ProxyRunner
from proxy.settings import Settings
from tests.support.ports import free_port

REPEATS = 7
BATCH = 32  # hits between two turns of the loop, as under the hit rows' 32 connections (the access lines' flush)


class CountingTransport:
    """A transport that takes every write and keeps only the count: no socket, no system call."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """What make_mocked_request asks of a transport (the peer's address)."""
        return ("127.0.0.1", 40000) if name == "peername" else default


class Discard:
    """A text stream that drops what it is given: the access lines are formatted, never written."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


async def per_hit(parts: Mapping[str, Callable[[int], Awaitable[object]]], hits: int) -> dict[str, list[float]]:
    """CPU microseconds per call of each part, in each of :data:`REPEATS` runs of ``hits`` calls, the loop turning
    every :data:`BATCH` calls. The parts take turns, a run each, so that each part's deferred work (the access
    lines' flush, the collector) stays mostly its own."""
    for part in parts.values():  # warm
        for i in range(BATCH * 10):
            await part(i)
    runs: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(REPEATS):
        for name, part in parts.items():
            started = cpu_seconds()
            for i in range(hits):
                await part(i)
                if i % BATCH == BATCH - 1:
                    await asyncio.sleep(0)
            runs[name].append((cpu_seconds() - started) / hits * 1e6)
    return runs


async def measure(upstream: str, hits: int) -> dict[str, float]:
    fields: dict[str, Any] = {  # the defaults but for these (pydantic converts the strings)
        "label_studio_url": upstream,
        "label_studio_api_key": LEGACY_TOKEN,
        "proxy_client_keys": (CLIENT_KEY,),
    }
    settings = Settings(**fields)
    configure_logging(settings.proxy_log_level, Discard())  # type: ignore[arg-type]  # a TextIO's write and flush
    app = create_app(settings, registry=CollectorRegistry())
    runner = ProxyRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    freeze_start_up()
    try:
        await asyncio.to_thread(warm_hits, f"http://127.0.0.1:{port}")
        assert runner.server is not None
        door = runner.server.request_handler
        transport = CountingTransport()
        headers = {"Host": f"127.0.0.1:{port}", aiohttp.hdrs.AUTHORIZATION: f"Token {CLIENT_KEY}"}
        requests = [
            make_mocked_request("GET", f"/api/annotations/{i}/", headers=headers, app=app, transport=transport)
            for i in range(1, HOT_IDS + 1)
        ]

        def request(i: int) -> web.Request:
            chosen = requests[i % HOT_IDS]
            chosen._cache.clear()  # what aiohttp's request works out once (query, keep-alive): anew per hit
            return chosen

        async def own_work(i: int) -> None:
            chosen = request(i)
            response = await door(chosen)
            await response.prepare(chosen)
            await response.write_eof()

        route = AnnotationRoute(app)

        async def handler(i: int) -> None:
            await route.get(request(i))

        async def handler_and_write(i: int) -> None:
            chosen = request(i)
            answer = await route.get(chosen)
            await answer.prepare(chosen)

        record = ACCESS_LOG.record

        async def access_line(i: int) -> None:
            record(
                "GET",
                "annotation",
                f"/api/annotations/{i % HOT_IDS + 1}/",
                200,
                "hit",
                0.000123,
                "0123456789abcdef0123456789abcdef",
            )

        await own_work(0)
        if transport.written < 1000:  # the hot ids' answers are over 1 KB each
            raise RuntimeError("the hits were not answered: nothing to measure")
        parts = {"own work": own_work, "handler": handler, "and write": handler_and_write, "access line": access_line}
        runs = await per_hit(parts, hits)
        costs = {name: statistics.median(runs[name]) for name in ("own work", "handler", "access line")}
        # The write is a difference: taken between runs made one after the other, which shared the host's moments.
        costs["write"] = statistics.median(b - a for a, b in zip(runs["handler"], runs["and write"], strict=True))
        return costs
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, default=20_000, help="hits per run of each part (default 20000)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (bench/run.py reads them)")
    args = parser.parse_args()
    with ExitStack() as stack:
        upstream = fake_upstream_beside(stack)
        on_the_proxy_cpu()
        costs = uvloop.run(measure(upstream, args.hits))
    if args.json:
        print(json.dumps(costs))
        return 0
    for part, us in costs.items():
        print(f"{part:12} {us:6.2f} us")
    print("\nCPU microseconds of this process per hit; the own work includes the three parts below it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a cold miss's CPU goes, part by part: each part run alone, many times, in this process.

    PYTHONPATH=. python bench/miss_costs.py [--misses 4000] [--latency 0.02] [--json]      (make bench runs it)

The proxy is built as ``python -m proxy`` builds it (``create_app`` with default settings, its cleanup contexts
run, no listener), in front of the bench's fake upstream (bench/upstream.py, no added latency, in its own
process on CPU 0, answering after the cold rows' 20 ms), with the in-process store and then with a private
redis-server. This process runs on CPU 1, on uvloop. Each part is driven by 16 concurrent tasks, as the bench's
cold rows drive 16 connections, over ids never asked before; its figure is this process's CPU (user and system)
per miss. The upstream's latency matters: paced by it, each miss runs on a loop that was idle a moment before,
and costs about half as much again as the same code run back to back (``--latency 0``).

    client      one GET through the proxy's upstream client (breaker, connection slots, aiohttp's client)
    entry       the body validated and made an entry (pydantic, the created_ago span, the ETag)
    render      the entry's first rendering (created_ago for now, kept in the render memo)
    store read  the store's read, with the claim of the fetch (one Lua script with Redis)
    store write the store's write, with the claim's release (one Lua script with Redis; a cold id's first
                version is announced to nobody)
    lookup      AnnotationService.from_store for a new id: all of the above, plus the load machinery, the
                metrics and the hot tier

What a miss costs besides the lookup (aiohttp's server, the edge, the handler, the response, the access line) is
the bench's cold row (``make bench``, rows d and d2) less the lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import ExitStack
from typing import Any, TypeVar

import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry

from bench.run import LATENCY, cpu_seconds, fake_upstream_beside, on_the_proxy_cpu
from bench.upstream import LEGACY_TOKEN
from proxy.__main__ import freeze_start_up
from proxy.app import create_app
from proxy.cache import AnnotationKey, CachedAnnotation, Variant
from proxy.entries import entry_from_body
from proxy.keys import LIVE_BODIES, SERVICE, STORE, UPSTREAM
from proxy.settings import Settings
from tests.support.redis_servers import running_redis

CONCURRENCY = 16  # the cold rows' connections
TTL = 300.0
SETTLE = 0.5  # seconds for what one part set going to finish before the next is timed
T = TypeVar("T")


async def per_call(call: Callable[[T], Awaitable[object]], arguments: Iterable[T]) -> float:
    """CPU microseconds per ``call``, made once with each of ``arguments`` by CONCURRENCY tasks."""
    todo = list(arguments)
    shared = iter(todo)

    async def worker() -> None:
        for argument in shared:
            await call(argument)

    started = cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (cpu_seconds() - started) / len(todo) * 1e6


def sync_per_call(call: Callable[[T], object], arguments: Iterable[T]) -> float:
    todo = list(arguments)
    started = cpu_seconds()
    for argument in todo:
        call(argument)
    return (cpu_seconds() - started) / len(todo) * 1e6


async def measure(upstream: str, redis_url: str | None, misses: int, first_id: int) -> dict[str, float]:
    fields: dict[str, Any] = {  # the defaults but for these (pydantic converts the strings)
        "label_studio_url": upstream,
        "label_studio_api_key": LEGACY_TOKEN,
        "redis_url": redis_url,
        "proxy_client_keys": ("bench-client-key-0123456789abcdef",),
        "proxy_check_interval": 300.0,  # the background dependency check: not a miss's work
    }
    settings = Settings(**fields)
    app = create_app(settings, registry=CollectorRegistry())
    runner = web.AppRunner(app)
    await runner.setup()  # the cleanup contexts: store, upstream client, service
    freeze_start_up()  # as python -m proxy does once it has started
    try:
        client, store, service, bodies = app[UPSTREAM], app[STORE], app[SERVICE], app[LIVE_BODIES]
        claim_ttl = settings.proxy_upstream_timeout + 1.0
        fetched: dict[int, bytes] = {}  # the client part's bodies, for the parts after it
        entries: list[CachedAnnotation] = []

        async def fetch(annotation_id: int) -> None:
            reply = await client.fetch_annotation(annotation_id, expand=False, request_id="bench")
            fetched[annotation_id] = reply.body
            reply.release()

        def make_entry(annotation_id: int) -> None:
            body = fetched[annotation_id]
            entries.append(entry_from_body(body, annotation_id=annotation_id, expand=False, fetched_at=0.0))

        async def write(entry: CachedAnnotation) -> None:
            await store.put(AnnotationKey(entry.annotation_id, Variant.PLAIN), entry, TTL, release=True)

        async def read(entry: CachedAnnotation) -> None:
            await store.get_or_claim(AnnotationKey(entry.annotation_id, Variant.PLAIN), claim_ttl)

        async def lookup(annotation_id: int) -> None:
            await service.from_store(annotation_id, expand=False, request_id="bench")

        await per_call(fetch, range(first_id - CONCURRENCY * 4, first_id))  # connections opened, code warm
        fetched.clear()
        costs = {"client": await per_call(fetch, range(first_id, first_id + misses))}
        costs["entry"] = sync_per_call(make_entry, list(fetched))
        now_us = time.time_ns() // 1000  # created_ago rendered for now, as a response renders it
        costs["render"] = sync_per_call(lambda entry: bodies.body(entry, now_us), entries)
        costs["store read"] = await per_call(read, entries)  # each a miss, which claims the fetch
        costs["store write"] = await per_call(write, entries)  # which releases the claim
        await asyncio.sleep(SETTLE)  # what the writes set going settles before the next part starts
        costs["lookup"] = await per_call(lookup, range(first_id + misses, first_id + 2 * misses))
        return costs
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--misses", type=int, default=4000, help="misses per part (default 4000)")
    parser.add_argument(
        "--latency",
        type=float,
        default=LATENCY,
        help=f"the upstream's added seconds (default {LATENCY}, the cold rows')",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (bench/run.py reads them)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the background dependency check's complaints: not figures
    with ExitStack() as stack:
        upstream = fake_upstream_beside(stack, latency=args.latency)
        redis = stack.enter_context(running_redis())  # on any CPU, as in the bench's rows: started before pinning
        on_the_proxy_cpu()
        rows = {
            "in-process store": uvloop.run(measure(upstream, None, args.misses, 10**6)),
            "Redis": uvloop.run(measure(upstream, redis.url, args.misses, 2 * 10**6)),
        }
    if args.json:
        print(json.dumps(rows))
        return 0
    parts = list(next(iter(rows.values())))
    print("| part | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for part in parts:
        print(f"| {part} | " + " | ".join(f"{costs[part]:.0f}" for costs in rows.values()) + " |")
    print("\nCPU microseconds of this process per miss; the lookup includes the parts above it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

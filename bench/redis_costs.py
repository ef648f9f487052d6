"""What one cached annotation costs Redis: memory (``MEMORY USAGE``) and commands per miss and per hit.

    PYTHONPATH=. python bench/redis_costs.py          (numbers for docs/scaling.md)

Starts a private redis-server on a free port, then for bodies of several sizes looks up 200 annotations twice
through the proxy's own service and store (the upstream is scripted): the first pass is all misses, the second
all hits read from Redis (no hot tier here, so each hit is a Redis round trip: the worst case). Counts come from
``INFO commandstats`` (commands run inside the store's Lua scripts are counted too); memory is the sum of
``MEMORY USAGE`` over every key, per annotation (its version, its pointer, its share of the task index).
"""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry
from redis import Redis

from proxy.cache import KeyScheme, open_redis_store
from proxy.exchange import UpstreamReply
from proxy.metrics import Metrics
from proxy.service import AnnotationService, CachePolicy
from tests.fakes.source import ScriptedSource
from tests.support.redis_servers import running_redis
from tests.support.samples import encode, sample

ANNOTATIONS = 200
SIZES = (600, 2_000, 10_000, 100_000)
POLICY = CachePolicy(ttl=300, stale_ttl=3600, negative_ttl=30, stale_if_error_ttl=86400, claim_ttl=11)


def body_of(size: int, annotation_id: int) -> bytes:
    """Label Studio's sample body for ``annotation_id``, grown by a free-text result to about ``size`` bytes."""
    fields = sample(id=annotation_id)
    room = max(0, size - len(encode(fields)) - 90)
    comment = {"type": "textarea", "from_name": "comment", "to_name": "text", "value": {"text": ["x" * room]}}
    fields["result"] = [*fields["result"], comment]
    return encode(fields)


def command_calls(client: Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def per_lookup(after: dict[str, int], before: dict[str, int]) -> dict[str, float]:
    skip = {"info", "hello", "ping", "script|load", "flushall"}
    changed = {name: after[name] - before.get(name, 0) for name in after if name not in skip}
    return {name: count / ANNOTATIONS for name, count in changed.items() if count}


async def measure(url: str, size: int) -> dict[str, object]:
    with Redis.from_url(url) as client:
        client.flushall()
        store = open_redis_store(url, KeyScheme("annotation-proxy:"), timeout=1.0)
        source = ScriptedSource()
        for annotation_id in range(1, ANNOTATIONS + 1):
            source.script(annotation_id, UpstreamReply(200, body_of(size, annotation_id)))
        metrics = Metrics.create(CollectorRegistry(), version="bench", process_metrics=False)
        service = AnnotationService(store, source, metrics, POLICY)
        try:
            before = command_calls(client)
            for annotation_id in range(1, ANNOTATIONS + 1):
                await service.lookup(annotation_id, expand=False, request_id="bench")
            after_misses = command_calls(client)
            for annotation_id in range(1, ANNOTATIONS + 1):
                await service.lookup(annotation_id, expand=False, request_id="bench")
            after_hits = command_calls(client)
            memory = sum(client.memory_usage(key) or 0 for key in client.scan_iter())
        finally:
            await service.close()
            await store.close()
    return {
        "body_bytes": len(body_of(size, 1)),
        "redis_bytes_per_annotation": round(memory / ANNOTATIONS),
        "commands_per_miss": per_lookup(after_misses, before),
        "commands_per_hit_from_redis": per_lookup(after_hits, after_misses),
    }


async def main(url: str) -> None:
    for size in SIZES:
        print(json.dumps(await measure(url, size)))


if __name__ == "__main__":
    with running_redis() as server:
        asyncio.run(main(server.url))

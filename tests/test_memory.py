"""The memory budget holds for a real proxy process: 100 distinct 5 MB annotations, both variants, read by several
callers at once and read again, through the in-process store and through Redis. The proxy's peak RSS (the
kernel's VmHWM, not a sample) stays under the budget its settings add up to (proxy/budget.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.settings import Settings
from tests.fakes.label_studio import FakeLabelStudio
from tests.support.processes import proxy_process
from tests.support.proxies import CLIENT_KEY, ServerFactory
from tests.support.redis_servers import running_redis

ANNOTATIONS = 100
CALLERS = 8
AUTH = {"Authorization": f"Token {CLIENT_KEY}"}
MiB = 1024 * 1024


def five_megabyte_result() -> list[dict[str, Any]]:
    """About 5 MB of regions, shaped like Label Studio's (many small objects: the costly kind to parse)."""
    region = {
        "from_name": "label",
        "to_name": "text",
        "type": "labels",
        "origin": "manual",
        "value": {"start": 0, "end": 40, "text": "x" * 40, "labels": ["Person"]},
    }
    return [region | {"id": f"r{i}"} for i in range(28_000)]


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM), kept by the kernel."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def read_everything(session: aiohttp.ClientSession, base: str, ids: list[int]) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for _ in range(2):  # misses, then hits (or misses again where the budget evicted)
        for annotation_id in ids:
            queue.put_nowait(f"{base}/api/annotations/{annotation_id}/")
            queue.put_nowait(f"{base}/api/annotations/{annotation_id}/?expand=completed_by")

    async def caller() -> None:
        while not queue.empty():
            url = queue.get_nowait()
            async with session.get(url, headers=AUTH) as response:
                body = await response.read()
                assert response.status == 200, (url, response.status, body[:200])
                assert len(body) > 4 * 1024 * 1024

    await asyncio.gather(*(caller() for _ in range(CALLERS)))


@pytest.fixture(scope="module")
def big_result() -> list[dict[str, Any]]:
    result = five_megabyte_result()
    assert 4.5e6 < len(json.dumps(result, separators=(",", ":"))) < 5.5e6  # compact, as Label Studio writes
    return result


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_the_proxy_stays_within_its_memory_budget_with_large_annotations(
    aiohttp_server: ServerFactory, tmp_path: Path, big_result: list[dict[str, Any]], backend: str
) -> None:
    fake = FakeLabelStudio()
    ids = [fake.add_annotation(result=big_result)["id"] for _ in range(ANNOTATIONS)]
    upstream: TestServer = await aiohttp_server(fake.app())
    with running_redis("--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru") as redis:
        settings = {"REDIS_URL": redis.url} if backend == "redis" else {}
        budget = Settings(
            label_studio_url="http://127.0.0.1/",
            label_studio_api_key=fake.legacy_token,
            redis_url=settings.get("REDIS_URL"),
        ).memory_budget()
        async with (
            proxy_process(upstream.make_url("/"), fake.legacy_token, tmp_path / "proxy.log", **settings) as proxy,
            aiohttp.ClientSession() as session,
        ):
            await read_everything(session, proxy.base, ids)
            peak = peak_rss(proxy.process.pid)
    print(f"\n{backend}: peak RSS {peak / MiB:.0f} MiB, budget {budget.total / MiB:.0f} MiB {budget.in_mib()}")
    assert len(fake.annotation_gets()) >= 2 * ANNOTATIONS
    assert peak < budget.total, f"peak RSS {peak / MiB:.0f} MiB over the budget of {budget.total / MiB:.0f} MiB"

"""Steady load on a proxy process: concurrent GETs over six annotations and both variants, each answer checked
against the body Label Studio serves for it, counted by phase (test_chaos, test_topologies)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp.test_utils import TestServer

from tests.fakes.label_studio import FakeLabelStudio
from tests.support.processes import HIT, Answer, ProxyProcess
from tests.support.proxies import ServerFactory

PAUSE = 0.01  # between one worker's requests: bounded load (half the pause of test_chaos's fault runs)
CACHE_AVAILABLE = "annotation_proxy_cache_available"


def comparable(body: bytes) -> str | None:
    """A body as canonical JSON without ``created_ago`` (recomputed per response); None if not a JSON object."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    data.pop("created_ago", None)
    return json.dumps(data, sort_keys=True)


Variant = tuple[int, bool]  # (annotation id, expand)


@dataclass
class PhaseStats:
    requests: int = 0
    errors: int = 0
    hits: int = 0
    in_flight: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, other: PhaseStats) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.hits += other.hits

    def __str__(self) -> str:
        ratio = self.hits / self.requests if self.requests else 0.0
        return f"{self.requests} requests, {self.errors} errors, {self.hits} hits (hit ratio {ratio:.1%})"


class SteadyLoad:
    """Concurrent GETs over a few ids and both variants, at a bounded rate; each answer checked against the body
    Label Studio serves for it and counted in the phase the request started in."""

    def __init__(self, proxy: ProxyProcess, session: aiohttp.ClientSession, bodies: dict[Variant, str]) -> None:
        self.proxy = proxy
        self.session = session
        self.bodies = bodies
        self.phase = "before"
        self.stats: dict[str, PhaseStats] = defaultdict(PhaseStats)
        self._stop = asyncio.Event()

    async def _worker(self, offset: int) -> None:
        variants = list(self.bodies)
        for annotation_id, expand in itertools.cycle(variants[offset:] + variants[:offset]):
            if self._stop.is_set():
                return
            stats = self.stats[self.phase]
            stats.in_flight += 1
            try:
                answer = await self.proxy.get(self.session, annotation_id, expand=expand)
            finally:
                stats.in_flight -= 1
            stats.requests += 1
            if not isinstance(answer, Answer) or answer.status != 200:
                stats.errors += 1
                if len(stats.examples) < 5:
                    stats.examples.append(f"id {annotation_id} (expand={expand}): {answer!r}"[:300])
            elif comparable(answer.body) != self.bodies[annotation_id, expand]:
                stats.errors += 1
                stats.examples.append(f"WRONG BODY for id {annotation_id} (expand={expand}): {answer.body[:300]!r}")
            elif answer.cache_status == HIT:
                stats.hits += 1
            await asyncio.sleep(PAUSE)

    @asynccontextmanager
    async def running(self, workers: int) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as group:
            for offset in range(workers):
                group.create_task(self._worker(offset))
            try:
                yield
            finally:
                self._stop.set()

    async def until(self, condition: Callable[[], bool], limit: float, what: str) -> float:
        """Keep the load on until ``condition`` holds (polled); the seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not condition():
            assert loop.time() - started < limit, f"{what}: not within {limit:.0f} s; {self.report()}"
            await asyncio.sleep(0.05)  # polling a condition, not a timing assertion
        return loop.time() - started

    async def enter(self, phase: str) -> None:
        """Count new requests in ``phase``, once those of the current one have all been answered."""
        previous, self.phase = self.phase, phase
        await self.until(lambda: self.stats[previous].in_flight == 0, 30, f"the last requests of {previous!r}")

    async def cache_available(self) -> float:
        return (await self.proxy.metrics(self.session))[CACHE_AVAILABLE]

    def report(self) -> str:
        return "; ".join(f"{phase}: {stats}" for phase, stats in self.stats.items())


async def six_annotations(aiohttp_server: ServerFactory) -> tuple[FakeLabelStudio, TestServer, dict[Variant, str]]:
    """A fake Label Studio holding annotations 1 to 6, listening, and what it serves for each."""
    fake = FakeLabelStudio()
    for _ in range(6):
        fake.add_annotation()
    upstream: TestServer = await aiohttp_server(fake.app())
    return fake, upstream, await label_studio_bodies(upstream, fake)


async def label_studio_bodies(upstream: TestServer, fake: FakeLabelStudio) -> dict[Variant, str]:
    """What the fake serves for each annotation and variant (without created_ago)."""
    bodies: dict[Variant, str] = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Token {fake.legacy_token}"}) as session:
        for annotation_id in range(1, 7):
            for expand in (False, True):
                query = {"expand": "completed_by"} if expand else {}
                async with session.get(upstream.make_url(f"/api/annotations/{annotation_id}/"), params=query) as got:
                    assert got.status == 200
                    body = comparable(await got.read())
                assert body is not None
                bodies[annotation_id, expand] = body
    return bodies

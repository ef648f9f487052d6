"""A bounded soak of the proxy: errors and memory (RSS) under a steady mix of traffic, for a fixed time.

    PYTHONPATH=. python bench/soak.py --seconds 60 --concurrency 32      (or: make soak)

Starts, all on 127.0.0.1 and all its own: a redis-server on a free port (tests/support/redis_servers.py), the fake Label
Studio of the tests (tests/fakes/label_studio.py) and the proxy as a subprocess (``python -m proxy``). Then drives
``--concurrency`` clients for ``--seconds`` (or ``--max-requests``, whichever comes first) with a mix of cache hits,
misses, 404s (remembered and not), invalid ids, ``?expand=completed_by`` variants, annotations changing upstream,
and occasional Label Studio faults the proxy is built to absorb (a 503 or an HTML 502 that one retry gets past,
an answer slowed down well within PROXY_UPSTREAM_TIMEOUT).

Reports requests, errors (any answer but the one expected: a 200 for an annotation that exists, a 404 for one
that does not; and every exception), the proxy's own counters, and its RSS (VmRSS from /proc/<pid>/status, or
process_resident_memory_bytes from its /metrics) at start, after warm-up and at the end. Exits 1 if any error
occurred, if RSS grew more than ``--rss-tolerance-mib`` after warm-up, or if the proxy did not stop cleanly on
SIGTERM; 2 if the set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

try:
    from tests.fakes.label_studio import FakeLabelStudio
    from tests.support.metrics_text import parse_metrics
    from tests.support.ports import free_port
    from tests.support.processes import clean_environment
    from tests.support.redis_servers import running_redis
except ImportError:  # pragma: no cover - how it is run, not what it tests
    sys.exit("soak: cannot import the fake Label Studio: run from the repository root with PYTHONPATH=.")

MiB = 1024 * 1024
LOOPBACK = "127.0.0.1"
UPSTREAM_TIMEOUT = 2.0  # PROXY_UPSTREAM_TIMEOUT: the injected delays stay well inside it
HOT_IDS = 50  # annotations read over and over (hits, stale refreshes)
START_TIMEOUT = 30.0
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5 * UPSTREAM_TIMEOUT)


# --- Measuring ----------------------------------------------------------------------------------------------------


async def metrics(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(f"{base}/metrics", timeout=CLIENT_TIMEOUT) as response:
        return parse_metrics(await response.text())


def proc_rss(pid: int) -> int | None:
    """VmRSS of ``pid`` in bytes, from /proc/<pid>/status (Linux); None where there is no such file."""
    with suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


async def rss_bytes(pid: int, session: aiohttp.ClientSession, base: str) -> int:
    """The proxy's resident set size: VmRSS from /proc, else what its /metrics says."""
    rss = proc_rss(pid)
    if rss is not None:
        return rss
    return int((await metrics(session, base))["process_resident_memory_bytes"])


def mib(size: float) -> str:
    return f"{size / MiB:.1f} MiB"


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.examples) < 10:
            self.examples.append(text[:300])


# --- The soak -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    seconds: float
    warmup: float
    concurrency: int
    max_requests: int
    ids: int
    rss_tolerance: int
    fault_interval: float
    seed: int


class Soak:
    def __init__(self, plan: Plan, fake: FakeLabelStudio, base: str, client_key: str) -> None:
        self.plan = plan
        self.fake = fake
        self.base = base
        self.headers = {"Authorization": f"Token {client_key}"}
        self.tally = Tally()
        self.random = random.Random(plan.seed)
        self.faults: Counter[str] = Counter()
        self.updates = 0
        self._deadline = 0.0

    def pick(self) -> tuple[str, str, int]:
        """(kind, path, the status it must get)."""
        roll = self.random.random()
        expand = self.random.random() < 0.2
        if roll < 0.70:
            kind, annotation_id, expected = "hot", self.random.randint(1, HOT_IDS), 200
        elif roll < 0.88:
            kind, annotation_id, expected = "cold", self.random.randint(HOT_IDS + 1, self.plan.ids), 200
        elif roll < 0.93:  # a few absent ids, asked again and again: remembered 404s
            kind, annotation_id, expected = "absent", self.plan.ids + self.random.randint(1, 20), 404
        elif roll < 0.98:  # absent ids never asked before: a 404 from Label Studio each time
            kind, annotation_id, expected = "absent-new", self.plan.ids + self.random.randint(21, 10**9), 404
        else:  # ids that can never name an annotation: the proxy's own 404
            bad = self.random.choice(["0", "abc", "-1", "1e3", "%31", "9" * 30])
            return "invalid-id", f"/api/annotations/{bad}/", 404
        query = "?expand=completed_by" if expand else ""
        return ("expand-" if expand else "") + kind, f"/api/annotations/{annotation_id}/{query}", expected

    async def client(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < self._deadline and self.tally.requests < self.plan.max_requests:
            kind, path, expected = self.pick()
            self.tally.requests += 1
            self.tally.kinds[kind] += 1
            try:
                url = URL(self.base + path, encoded=True)  # as written: "%31" must reach the proxy as "%31"
                async with session.get(url, headers=self.headers, timeout=CLIENT_TIMEOUT) as response:
                    body = await response.read()
                    self.tally.statuses[str(response.status)] += 1
                    if response.status != expected:
                        self.tally.error(f"{path}: {response.status} (expected {expected}): {body[:200]!r}")
                    elif expected == 200 and str(json.loads(body).get("id")) != path.split("/")[3]:
                        self.tally.error(f"{path}: a body of another annotation: {body[:200]!r}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.tally.statuses[type(exc).__name__] += 1
                self.tally.error(f"{path}: {exc!r}")

    async def chaos(self) -> None:
        """Annotations change upstream now and then, and Label Studio has the odd fault the proxy absorbs."""
        loop = asyncio.get_running_loop()
        gets = 0
        while loop.time() < self._deadline:
            await asyncio.sleep(self.plan.fault_interval)
            self.fake.update_annotation(self.random.randint(1, HOT_IDS), lead_time=round(self.random.random() * 100, 3))
            self.updates += 1
            now = len(self.fake.annotation_gets())
            if now == gets:  # the last fault has not been met yet: never two in a row (the proxy retries twice)
                continue
            gets = now
            fault = self.random.choice(["503", "html-502", "slow"])
            if fault == "503":
                self.fake.fail_next(status=503)
            elif fault == "html-502":
                self.fake.fail_next(status=502, body=b"<html><h1>502 Bad Gateway</h1></html>", content_type="text/html")
            else:
                self.fake.delay_next(UPSTREAM_TIMEOUT / 4)
            self.faults[fault] += 1
            # The fake records every request; a long soak must not grow this process without bound.
            if now > 100_000:
                self.fake.requests.clear()
                self.fake._annotation_gets.clear()  # the fake has no public reset
                gets = 0

    async def run(self, session: aiohttp.ClientSession, until: float) -> None:
        self._deadline = until
        async with asyncio.TaskGroup() as group:
            group.create_task(self.chaos())
            for _ in range(self.plan.concurrency):
                group.create_task(self.client(session))


async def wait_until_healthy(base: str, process: asyncio.subprocess.Process, session: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"the proxy exited with {process.returncode}")
        with suppress(aiohttp.ClientError):
            async with session.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError("the proxy did not become healthy")


def proxy_environment(upstream: str, redis_url: str, port: int, client_key: str, token: str) -> dict[str, str]:
    return clean_environment() | {
        "LABEL_STUDIO_URL": upstream,
        "LABEL_STUDIO_API_KEY": token,
        "REDIS_URL": redis_url,
        "PROXY_HOST": LOOPBACK,
        "PROXY_PORT": str(port),
        "PROXY_CLIENT_KEYS": client_key,
        "PROXY_CACHE_TTL": "5",  # short: hits, stale refreshes and misses all keep happening
        "PROXY_STALE_TTL": "5",
        "PROXY_NEGATIVE_TTL": "5",
        "PROXY_UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT),
        "PROXY_LOG_LEVEL": "WARNING",
    }


@dataclass
class Measured:
    elapsed: float = 0.0
    requests_warm: int = 0
    rss_start: int = 0
    rss_warm: int = 0
    rss_end: int = 0
    samples: list[int] = field(default_factory=list)  # RSS every few seconds after warm-up
    final: dict[str, float] = field(default_factory=dict)  # the proxy's /metrics at the end
    exit_status: int | None = None  # the proxy's, after SIGTERM


async def measure(work: Soak, process: asyncio.subprocess.Process, session: aiohttp.ClientSession) -> Measured:
    """Drive the traffic; RSS at start, after warm-up, every 5 s, and at the end."""
    plan, base = work.plan, work.base
    measured = Measured()
    await wait_until_healthy(base, process, session)
    measured.rss_start = await rss_bytes(process.pid, session, base)
    loop = asyncio.get_running_loop()
    started = loop.time()
    runs = asyncio.create_task(work.run(session, started + plan.seconds))
    await asyncio.wait({runs}, timeout=plan.warmup)
    measured.rss_warm = await rss_bytes(process.pid, session, base)
    measured.requests_warm = work.tally.requests
    measured.samples.append(measured.rss_warm)
    while not runs.done():
        await asyncio.wait({runs}, timeout=5.0)
        measured.samples.append(await rss_bytes(process.pid, session, base))
    await runs
    measured.elapsed = loop.time() - started
    measured.rss_end = await rss_bytes(process.pid, session, base)
    measured.final = await metrics(session, base)
    return measured


async def soak(plan: Plan, redis_url: str, workdir: Path) -> int:
    fake = FakeLabelStudio()
    for _ in range(plan.ids):
        fake.add_annotation()
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, LOOPBACK, upstream_port).start()

    client_key = secrets.token_hex(24)
    port = free_port()
    upstream = f"http://{LOOPBACK}:{upstream_port}/"
    env = proxy_environment(upstream, redis_url, port, client_key, fake.legacy_token)
    log_path = workdir / "proxy.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    work = Soak(plan, fake, f"http://{LOOPBACK}:{port}", client_key)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=plan.concurrency)) as session:
            measured = await measure(work, process, session)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), START_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        await runner.cleanup()
    measured.exit_status = process.returncode
    status = report(work, measured)
    if status != 0 and log_path.stat().st_size:
        print("proxy log (last lines):\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-20:]))
    return status


def report(work: Soak, measured: Measured) -> int:
    """Print the figures; 1 if anything failed, else 0."""
    plan, tally, m = work.plan, work.tally, measured
    growth = m.rss_end - m.rss_warm
    print(f"soak: {m.elapsed:.1f} s, concurrency {plan.concurrency}, {plan.ids} annotations, seed {plan.seed}")
    print(f"  requests: {tally.requests} ({tally.requests / m.elapsed:.0f}/s), {m.requests_warm} during warm-up")
    print(f"  errors:   {tally.errors}")
    print(f"  answers:  {dict(sorted(tally.statuses.items()))}")
    print(f"  mix:      {dict(sorted(tally.kinds.items()))}")
    print(f"  upstream: faults injected {dict(sorted(work.faults.items()))}, annotations changed {work.updates}")
    print("  proxy:    " + ", ".join(f"{name} {value:g}" for name, value in interesting(m.final).items()))
    print(
        f"  RSS:      start {mib(m.rss_start)}, after warm-up ({plan.warmup:g} s) {mib(m.rss_warm)}, "
        f"end {mib(m.rss_end)}; growth after warm-up {growth / MiB:+.1f} MiB (tolerance {mib(plan.rss_tolerance)}); "
        f"every 5 s after warm-up: min {mib(min(m.samples))}, max {mib(max(m.samples))}"
    )
    print("  RSS every 5 s after warm-up (MiB): " + " ".join(f"{sample / MiB:.1f}" for sample in m.samples))
    print(f"  proxy exit status after SIGTERM: {m.exit_status}")
    for example in tally.examples:
        print(f"  error: {example}")
    failures = []
    if tally.errors:
        failures.append(f"{tally.errors} errors")
    if growth > plan.rss_tolerance:
        failures.append(f"RSS grew {mib(growth)} after warm-up, more than {mib(plan.rss_tolerance)}")
    if m.exit_status != 0:
        failures.append(f"the proxy exited with {m.exit_status} after SIGTERM")
    print(f"FAIL: {'; '.join(failures)}" if failures else "PASS: no errors, memory flat")
    return 1 if failures else 0


def interesting(samples: dict[str, float]) -> dict[str, float]:
    """The proxy's counters worth a line in the report."""
    prefixes = (
        "annotation_proxy_cache_requests_total",
        "annotation_proxy_upstream_requests_total",
        "annotation_proxy_upstream_retries_total",
        "annotation_proxy_cache_errors_total",
        "annotation_proxy_coalesced_requests_total",
        "annotation_proxy_revalidations_total",
        "annotation_proxy_validation_failures_total",
    )
    return {
        name.removeprefix("annotation_proxy_"): value
        for name, value in samples.items()
        if name.startswith(prefixes) and value
    }


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to drive traffic (at most 3600)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once (at most 512)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before the warm RSS (default: a quarter)")
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="stop after this many requests")
    parser.add_argument("--ids", type=int, default=2000, help="annotations in the fake Label Studio")
    parser.add_argument("--rss-tolerance-mib", type=float, default=16.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--fault-interval", type=float, default=0.5, help="seconds between upstream faults")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the traffic mix")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be in (0, 3600]")
    if not 1 <= args.concurrency <= 512:
        parser.error("--concurrency must be in [1, 512]")
    if args.ids <= HOT_IDS:
        parser.error(f"--ids must be more than {HOT_IDS}")
    warmup = args.seconds / 4 if args.warmup is None else args.warmup
    if not 0 <= warmup < args.seconds:
        parser.error("--warmup must be shorter than --seconds")
    return Plan(
        seconds=args.seconds,
        warmup=warmup,
        concurrency=args.concurrency,
        max_requests=args.max_requests,
        ids=args.ids,
        rss_tolerance=round(args.rss_tolerance_mib * MiB),
        fault_interval=args.fault_interval,
        seed=args.seed if args.seed is not None else secrets.randbelow(2**31),
    )


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    try:
        with running_redis() as redis, tempfile.TemporaryDirectory(prefix="annotation-proxy-soak-") as workdir:
            return asyncio.run(soak(plan, redis.url, Path(workdir)))
    except RuntimeError as exc:
        print(f"soak: set-up failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

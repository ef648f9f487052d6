"""The hit-path benchmark: the proxy against aiohttp's own limit, on loopback, one row after another.

    make bench                                  (or: PYTHONPATH=. python bench/run.py [--duration 10] [--check])

Rows, each measured with wrk after a short warm-up run, the same way (threads, connections, CPU pinning):

    (a)  a bare aiohttp web.Application, one route returning the annotation's 855 bytes, asyncio's loop
    (a') the same on uvloop: the framework's limit here, and the baseline of the targets (the issue's (a))
    (a'-1) the same at one connection: each request arrives at an idle server, as the cold rows' requests do
    (a1) aiohttp's low-level server (web.Server, one handler, no Application), the same bytes, uvloop
    (a2) an asyncio Protocol with httptools' parser writing one prebuilt response, uvloop: near the limit of Python
    (b)  the proxy, cache hits, in-process store
    (c)  the proxy, cache hits, Redis (a private redis-server on a free port)
    (c-1) the same at one connection
    (d0) the fake upstream itself, cold ids, with a fixed added latency
    (d1) aiohttp's web.Application passing the same misses through with aiohttp's client: the cold rows' floor
    (d)  the proxy, cold misses over ids never asked before, against that upstream, in-process store
    (d2) the same with Redis, redis-server left on whichever CPU the kernel gives it
    (d3) the same with redis-server on CPU 0, off the proxy's (with taskset only)
    (e)  nginx proxy_cache, hits, in front of the same upstream (skipped when nginx is not installed)
    (f)  the proxy, cache hits, Redis, a 20 KB annotation (about 60 regions), no Accept-Encoding
    (g)  the same with ``Accept-Encoding: gzip`` (what the SDK and httpx send): the body gzipped once per rendering

The proxy runs as a user gets it: ``python -m proxy`` with client keys on, metrics on, logging at INFO to a file.
Hits cycle over HOT_IDS annotations, warmed first (a hit is checked by its Cache-Status before measuring). With
``taskset``, servers run on CPU 1 and wrk on CPU 0 (with the upstream of the cold rows, and redis-server in (d3)).
The (a1), (a2) and (d1) servers are bench/floor.py. Per row, over the measured wrk run only: the server process's CPU
(user and system, from /proc) per request wrk counted, and the CPU that processes outside the benchmark took (all
busy CPU time from /proc/stat less this script's and all its child processes'); a row where those neighbours took
more than BUSY_LIMIT of a CPU is measured once more, and marked when they still did. The proxy's resident set size
is sampled every 0.2 s while it runs. Prints one markdown table and the targets of the performance issue, and
rewrites the part of docs/performance.md between its markers. Last, bench/hit_costs.py splits the proxy's own work
per hit into its parts, and bench/miss_costs.py a cold miss's CPU, for the tables under the targets. Exit status: 0
when the run completed (1 with ``--check`` when a target fails), 2 when the set-up failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from bench.soak import proc_rss
from bench.upstream import LEGACY_TOKEN
from tests.support.ports import free_port
from tests.support.processes import clean_environment
from tests.support.redis_servers import running_redis

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
LOOPBACK = "127.0.0.1"
CLIENT_KEY = "bench-client-key-0123456789abcdef"
HOT_IDS = 100
LARGE_BODY = 20_000  # (f) and (g): a realistic large annotation
LATENCY = 0.020  # the fake upstream's added latency for (d0) to (d3) and (e)
THREADS, CONNECTIONS, COLD_CONNECTIONS = 1, 32, 16
# Rows (a'-1) and (c-1): one request at a time, each arriving at an idle server, as cold misses arrive.
ONE = "one connection: every request wakes an idle server"
BASELINE = "a'"  # the (a): aiohttp web.Application, one route, uvloop
PAIRS = 3  # (a') and each proxy hit row measured alternately this many times, both servers up (paired_hits)
PAIR_SECONDS = 5.0
TOGETHER = 3  # then both loaded at once this many times, PAIR_SECONDS each (paired_hits)
BUSY_LIMIT = 15.0  # percent of one CPU that processes outside the benchmark may take during a row
MiB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc's CPU times


class SetupError(Exception):
    pass


# --- wrk ------------------------------------------------------------------------------------------------------------

HOT_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/annotations/" .. (n %% %(ids)d + 1) .. "/", {["Authorization"] = "%(auth)s"%(more)s})
end
"""

# Every request a new id: a per-thread counter from a per-run offset, so ids never repeat within a run.
COLD_SCRIPT = """
local n = %(start)d
request = function()
  n = n + 1
  return wrk.format("GET", "/api/annotations/" .. n .. "/", {["Authorization"] = "%(auth)s"})
end
"""


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bytes_per_response: float  # on the wire, headers included


def _bytes(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(B|KB|MB|GB)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit]


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def can_pin() -> bool:
    """Whether the rows' processes can be put on CPUs of their own: taskset exists and the machine has two or more."""
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: int, command: list[str]) -> list[str]:
    """``command`` on one CPU, when :func:`can_pin`."""
    return ["taskset", "-c", str(cpu), *command] if can_pin() else command


def wrk(url: str, script: str, *, seconds: float, connections: int) -> WrkResult:
    return wrk_together([url], script, seconds=seconds, connections=connections)[0]


def wrk_together(urls: list[str], script: str, *, seconds: float, connections: int) -> list[WrkResult]:
    """One wrk per URL, all started at once (on CPU 0) and run for the same ``seconds``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        command = [
            "wrk",
            "-t",
            str(THREADS),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--latency",
            "-s",
            lua.name,
        ]
        runs = [subprocess.Popen(pinned(0, [*command, url]), stdout=subprocess.PIPE, text=True) for url in urls]
        outputs = [run.communicate()[0] for run in runs]
    for url, run in zip(urls, runs, strict=True):
        if run.returncode != 0:
            raise SetupError(f"wrk against {url} exited with {run.returncode}")
    return [_wrk_result(url, output) for url, output in zip(urls, outputs, strict=True)]


def _wrk_result(url: str, output: str) -> WrkResult:
    if "Non-2xx" in output or "Socket errors" in output:
        raise SetupError(f"wrk saw errors against {url}:\n{output}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return WrkResult(
        rps=rps,
        bytes_per_response=_bytes(re.search(r"Transfer/sec:\s+(\S+)", output).group(1)) / rps,  # type: ignore[union-attr]
        p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]),
        requests=int(re.search(r"(\d+) requests in", output).group(1)),  # type: ignore[union-attr]
    )


# --- CPU accounting (Linux /proc) -----------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (the first is the state), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def process_ticks(pid: int) -> int:
    """User and system CPU time of ``pid`` (all its threads), in clock ticks; 0 once it is gone."""
    fields = proc_stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0


def descendants(root: int) -> list[int]:
    """Every live process under ``root`` (children, theirs, ...), from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def busy_ticks() -> int:
    """The ticks every CPU spent running processes (user, nice, system), from /proc/stat."""
    user, nice, system = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]
    return int(user) + int(nice) + int(system)


@dataclass(frozen=True)
class CpuSnapshot:
    at: float  # monotonic seconds
    busy: int  # ticks, all CPUs
    tree: dict[int, int]  # ticks of each live process under this one
    own: float  # ticks of this process and of its children already reaped (wrk, once it ran)

    @classmethod
    def take(cls) -> CpuSnapshot:
        times = os.times()
        own = (times.user + times.system + times.children_user + times.children_system) * TICKS
        tree = {pid: process_ticks(pid) for pid in descendants(os.getpid())}
        return cls(at=time.monotonic(), busy=busy_ticks(), tree=tree, own=own)


@dataclass(frozen=True)
class Cpu:
    server_us: float  # CPU microseconds of the server process per request wrk counted
    others: float  # percent of one CPU taken by processes outside the benchmark


def cpu_between(before: CpuSnapshot, after: CpuSnapshot, server: int, requests: int) -> Cpu:
    ours = after.own - before.own + sum(ticks - before.tree.get(pid, 0) for pid, ticks in after.tree.items())
    seconds = after.at - before.at
    server_ticks = after.tree.get(server, 0) - before.tree.get(server, 0)
    return Cpu(
        server_us=server_ticks / TICKS * 1e6 / max(requests, 1),
        others=max(after.busy - before.busy - ours, 0) / TICKS / seconds * 100,
    )


# --- Processes ------------------------------------------------------------------------------------------------------


def wait_for(url: str, process: subprocess.Popen[bytes], what: str, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SetupError(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1):  # noqa: S310
                return
        except OSError:
            time.sleep(0.05)
    raise SetupError(f"{what} did not answer {url}")


def check_serving(pid: int, what: str) -> None:
    """``pid`` is the server itself: taskset has exec'd it (a wrapper's CPU would read as nothing)."""
    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    if Path(argv0.decode()).name == "taskset":
        raise SetupError(f"{what}: pid {pid} is still taskset, not the server")


@contextmanager
def running(
    command: list[str], *, url: str, what: str, env: dict[str, str] | None = None, cpu: int = 1
) -> Iterator[int]:
    """A server process on ``cpu`` until the block ends; yields its pid (the server's, not taskset's)."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(pinned(cpu, command), env=env, stdout=log, stderr=log, cwd=ROOT)
        try:
            wait_for(url, process, what)
            check_serving(process.pid, what)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def upstream(port: int, *, latency: float = 0.0, constant: bool = False, uvloop: bool = False) -> list[str]:
    command = [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(port), "--latency", str(latency)]
    return command + (["--constant"] if constant else []) + (["--uvloop"] if uvloop else [])


def floor(port: int, kind: str, upstream_url: str | None = None) -> list[str]:
    command = [sys.executable, str(ROOT / "bench" / "floor.py"), "--port", str(port), "--kind", kind]
    return command + (["--upstream", upstream_url] if upstream_url else [])


def proxy_env(upstream_port: int, port: int, redis_url: str | None) -> dict[str, str]:
    env = clean_environment() | {
        "PYTHONPATH": str(ROOT),
        "LABEL_STUDIO_URL": f"http://{LOOPBACK}:{upstream_port}",
        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
        "PROXY_PORT": str(port),
        "PROXY_CLIENT_KEYS": CLIENT_KEY,
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


@contextmanager
def proxy(
    upstream_port: int, redis_url: str | None, *, extra: dict[str, str] | None = None, python: str = sys.executable
) -> Iterator[tuple[str, int]]:
    """``python -m proxy`` (on the interpreter ``python``) in front of that upstream until the block ends, ``extra``
    added to its environment; yields its base URL and pid."""
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    env = proxy_env(upstream_port, port, redis_url) | (extra or {})
    with running([python, "-m", "proxy"], url=f"{base}/healthz", what="the proxy", env=env) as pid:
        yield base, pid


class RssSampler:
    """The max VmRSS of a process, sampled every 0.2 s on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_rss(self.pid) or 0)
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def warm_hits(base: str) -> None:
    """Every hot id fetched, then asked again until it is a hit."""
    headers = {"Authorization": f"Token {CLIENT_KEY}"}
    for annotation_id in range(1, HOT_IDS + 1):
        for _ in range(3):
            request = urllib.request.Request(f"{base}/api/annotations/{annotation_id}/", headers=headers)  # noqa: S310
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                status = response.headers.get("Cache-Status", "")
        if "hit" not in status:
            raise SetupError(f"annotation {annotation_id} is not a hit after warming: Cache-Status {status!r}")


# --- Rows -----------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    what: str
    result: WrkResult
    cpu: Cpu
    busy: bool = False  # neighbours above BUSY_LIMIT, measured twice
    rss: int | None = None


class ColdIds:
    """Each call: the first of a range of ids no earlier call's range holds (a run asks far fewer than a million)."""

    def __init__(self) -> None:
        self._next = 10**6

    def __call__(self) -> int:
        self._next += 10**6
        return self._next


@dataclass
class Run:
    seconds: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    miss_parts: dict[str, dict[str, float]] = field(default_factory=dict)  # bench/miss_costs.py's, per store
    hit_parts: dict[str, float] = field(default_factory=dict)  # bench/hit_costs.py's
    # (b) and (c) each over (a'), measured alternately: requests/s and p99, per pair
    pairs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # (b) and (c) each against (a'), loaded at once on one CPU: requests/s, and (a')'s CPU per request over the
    # proxy's, per round
    together: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    cold_ids: ColdIds = field(default_factory=ColdIds)

    def measure(
        self, name: str, what: str, url: str, script: Callable[[], str], *, server: int, connections: int = CONNECTIONS
    ) -> Row:
        """A warm-up run, then the measured one (once more when neighbours were busy); ``script`` is asked for the
        Lua of each run."""
        wrk(url, script(), seconds=min(2.0, self.seconds), connections=connections)
        row = Row(name, what, *self.sample(url, script(), server=server, connections=connections))
        if row.cpu.others > BUSY_LIMIT:
            print(f"  {name}: other processes took {row.cpu.others:.0f}% of a CPU; measuring again", flush=True)
            row = Row(name, what, *self.sample(url, script(), server=server, connections=connections))
            row.busy = row.cpu.others > BUSY_LIMIT
        self.rows.append(row)
        print(
            f"  {name}: {row.result.rps:,.0f} requests/s, p50 {row.result.p50_ms:.2f} ms, "
            f"server {row.cpu.server_us:.0f} us CPU a request, others {row.cpu.others:.0f}% of a CPU",
            flush=True,
        )
        return row

    def sample(self, url: str, script: str, *, server: int, connections: int) -> tuple[WrkResult, Cpu]:
        """One measured wrk run, and the CPU the server and everyone else took during it."""
        before = CpuSnapshot.take()
        result = wrk(url, script, seconds=self.seconds, connections=connections)
        after = CpuSnapshot.take()
        return result, cpu_between(before, after, server, result.requests)

    def row(self, name: str) -> Row | None:
        return next((row for row in self.rows if row.name == name), None)


def hot_script(accept_encoding: str | None = None) -> str:
    more = f', ["Accept-Encoding"] = "{accept_encoding}"' if accept_encoding else ""
    return HOT_SCRIPT % {"ids": HOT_IDS, "auth": f"Token {CLIENT_KEY}", "more": more}


def cold_script(start: int, token: str = CLIENT_KEY) -> str:
    return COLD_SCRIPT % {"start": start, "auth": f"Token {token}"}


BASELINE_SERVER = partial(upstream, constant=True, uvloop=True)  # row (a'): aiohttp web.Application on uvloop


@contextmanager
def reference_server(name: str, command: Callable[[int], list[str]]) -> Iterator[tuple[str, int]]:
    """One of the reference rows' servers on a free port until the block ends; yields its base URL and pid."""
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    env = os.environ | {"PYTHONPATH": str(ROOT)}  # bench/floor.py imports bench.upstream
    with running(command(port), url=f"{base}/health", what=f"server ({name})", env=env) as pid:
        yield base, pid


def reference_rows(run: Run) -> None:
    """(a) to (a2): servers that answer every request with the same 855 bytes, from aiohttp down to httptools."""
    servers: list[tuple[str, str, Callable[[int], list[str]]]] = [
        ("a", "bare aiohttp web.Application, one route, 855 bytes, asyncio's loop", partial(upstream, constant=True)),
        (BASELINE, "the same on uvloop: the targets' baseline", BASELINE_SERVER),
        ("a1", "aiohttp's low-level web.Server, one handler, the same bytes, uvloop", partial(floor, kind="lowlevel")),
        ("a2", "asyncio Protocol, httptools parser, one prebuilt response, uvloop", partial(floor, kind="httptools")),
    ]
    if find_spec("httptools") is None:
        servers.pop()
        run.notes.append("(a2) skipped: httptools is not installed (pip install -e '.[test]').")
    for name, what, command in servers:
        with reference_server(name, command) as (base, pid):
            run.measure(name, what, base, hot_script, server=pid)
            if name == BASELINE:
                run.measure(f"{name}-1", f"the same, {ONE}", base, hot_script, server=pid, connections=1)


def proxy_hit_rows(run: Run, upstream_port: int) -> None:
    with running_redis() as redis:
        for name, redis_url, store in (("b", None, "in-process store"), ("c", redis.url, "Redis")):
            with proxy(upstream_port, redis_url) as (base, pid):
                warm_hits(base)
                with RssSampler(pid) as rss:
                    row = run.measure(name, f"proxy, hits over {HOT_IDS} ids, {store}", base, hot_script, server=pid)
                    if name == "c":
                        run.measure("c-1", f"the same, {ONE}", base, hot_script, server=pid, connections=1)
                    paired_hits(run, name, base)
                    together_hits(run, name, base, pid)
                row.rss = rss.peak


def paired_hits(run: Run, name: str, proxy_base: str) -> None:
    """(a') and the proxy's row ``name`` measured alternately, :data:`PAIRS` times, with both servers up: a ratio
    per pair, each from runs seconds apart rather than minutes, so that a machine whose speed drifts (a shared
    host, which the others' CPU does not show) shows how far the table's single ratio can be trusted. Each server
    runs alone on the CPU, as in the rows, unlike :func:`together_hits`."""
    pairs = run.pairs.setdefault(name, [])
    with reference_server(BASELINE, BASELINE_SERVER) as (base, _):
        wrk(base, hot_script(), seconds=min(2.0, run.seconds), connections=CONNECTIONS)
        for _ in range(PAIRS):
            a = wrk(base, hot_script(), seconds=PAIR_SECONDS, connections=CONNECTIONS)
            p = wrk(proxy_base, hot_script(), seconds=PAIR_SECONDS, connections=CONNECTIONS)
            pairs.append((p.rps / a.rps, p.p99_ms / a.p99_ms))
    print(f"  paired ({name})/(a'): " + ", ".join(f"{rps:.2f}" for rps, _ in pairs), flush=True)


def together_hits(run: Run, name: str, proxy_base: str, proxy_pid: int) -> None:
    """(a') and the proxy's row ``name`` loaded at once, :data:`TOGETHER` times: both servers on the same CPU,
    each by its own wrk, so that both live through the same moments of the machine. Each gets half the CPU, so
    the ratio of their requests/s is the inverse ratio of their CPU per request, which is measured too."""
    rounds = run.together.setdefault(name, [])
    with reference_server(BASELINE, BASELINE_SERVER) as (base, base_pid):
        wrk(base, hot_script(), seconds=min(2.0, run.seconds), connections=CONNECTIONS)
        for _ in range(TOGETHER):
            ticks = process_ticks(base_pid), process_ticks(proxy_pid)
            a, p = wrk_together([base, proxy_base], hot_script(), seconds=PAIR_SECONDS, connections=CONNECTIONS)
            a_cpu = (process_ticks(base_pid) - ticks[0]) / a.requests
            p_cpu = (process_ticks(proxy_pid) - ticks[1]) / p.requests
            rounds.append((p.rps / a.rps, a_cpu / p_cpu))
    print(f"  together ({name})/(a'): " + ", ".join(f"{rps:.2f}" for rps, _ in rounds), flush=True)


def large_body_rows(run: Run) -> None:
    """(f) and (g): hits of a 20 KB annotation from Redis, as they are and gzipped."""
    upstream_port = free_port()
    command = [*upstream(upstream_port, uvloop=True), "--body-bytes", str(LARGE_BODY)]
    with (
        running_redis() as redis,
        running(command, url=f"http://{LOOPBACK}:{upstream_port}/health", what="upstream", cpu=0),
        proxy(upstream_port, redis.url) as (base, pid),
    ):
        warm_hits(base)
        with RssSampler(pid) as rss:
            for name, coding in (("f", None), ("g", "gzip")):
                what = f"proxy, hits, Redis, {LARGE_BODY // 1000} KB body, " + (
                    "gzipped (Accept-Encoding: gzip)" if coding else "no Accept-Encoding"
                )
                row = run.measure(name, what, base, partial(hot_script, coding), server=pid)
        row.rss = rss.peak


def upstream_cold_row(run: Run, upstream_port: int, upstream_pid: int) -> None:
    """(d0): the slow upstream alone, which the cold rows' added p50 is measured from."""
    run.measure(
        "d0",
        f"fake upstream itself, {LATENCY * 1000:.0f} ms added",
        f"http://{LOOPBACK}:{upstream_port}",
        lambda: cold_script(run.cold_ids(), LEGACY_TOKEN),
        server=upstream_pid,
        connections=COLD_CONNECTIONS,
    )


def cold_floor_row(run: Run, upstream_port: int) -> None:
    """(d1): aiohttp's server and client passing cold misses through with nothing else, the floor of (d) to (d3)."""
    command = partial(floor, kind="passthrough", upstream_url=f"http://{LOOPBACK}:{upstream_port}")
    with reference_server("d1", command) as (base, pid):
        run.measure(
            "d1",
            "aiohttp web.Application, one route that asks the upstream with aiohttp's client, uvloop: "
            "the cold rows' floor",
            base,
            lambda: cold_script(run.cold_ids()),  # the proxy's requests, key and all: (d1) sends its own token
            server=pid,
            connections=COLD_CONNECTIONS,
        )


# Row (d3): row (d2) with redis-server kept off the proxy's CPU, as a Redis with a CPU of its own is (one on another
# host would add the network's round trips). Left free, as in (d2), the kernel ran it mostly on the proxy's CPU,
# where the proxy wakes it (docs/performance-log.md, the sixteenth round), and each reply waits for the proxy's turn.
APART = "redis-server on CPU 0, with wrk and the upstream: off the proxy's CPU"


def on_cpu(pid: int, cpu: int) -> None:
    """Every thread of process ``pid`` on ``cpu`` from now on."""
    for thread in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(thread.name), {cpu})


def proxy_cold_rows(run: Run, upstream_port: int) -> None:
    """(d) and (d2): every request a miss (the warm-up and each run walk ids of their own), in-process and Redis;
    then (d3), (d2) with redis-server moved off the proxy's CPU, where the machine has a second one."""
    with running_redis() as redis:
        rows = [("d", None, "in-process store"), ("d2", redis.url, "Redis")]
        if can_pin():
            rows.append(("d3", redis.url, f"Redis, {APART}"))
        else:
            run.notes.append("(d3) was skipped: moving redis-server off the proxy's CPU takes taskset and two CPUs.")
        for name, redis_url, store in rows:
            if name == "d3":
                on_cpu(redis.process.pid, 0)
            with proxy(upstream_port, redis_url) as (base, pid), RssSampler(pid) as rss:
                row = run.measure(
                    name,
                    f"proxy, cold misses (new ids), {store}",
                    base,
                    lambda: cold_script(run.cold_ids()),
                    server=pid,
                    connections=COLD_CONNECTIONS,
                )
            row.rss = rss.peak


# One process (master_process off): the pid running() yields is nginx's worker, the one whose CPU the row reports.
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log stderr error;
pid %(dir)s/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %(dir)s/body;
  proxy_temp_path %(dir)s/proxy;
  fastcgi_temp_path %(dir)s/fastcgi;
  uwsgi_temp_path %(dir)s/uwsgi;
  scgi_temp_path %(dir)s/scgi;
  proxy_cache_path %(dir)s/cache keys_zone=annotations:10m;
  upstream label_studio { server 127.0.0.1:%(upstream)d; keepalive 32; }
  server {
    listen 127.0.0.1:%(port)d;
    location /api/annotations/ {
      proxy_pass http://label_studio;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Token %(token)s";
      proxy_cache annotations;
      proxy_cache_valid 200 10m;
      proxy_cache_key $uri;
      add_header Cache-Status $upstream_cache_status;
    }
    location /healthz { return 200 "ok"; }
  }
}
"""


def nginx_binary() -> str | None:
    """nginx on the PATH or in /usr/sbin, where Debian puts it (on root's PATH, off a user's), as
    .ci/system-packages looks."""
    return shutil.which("nginx", path=f"{os.environ.get('PATH', os.defpath)}{os.pathsep}/usr/sbin{os.pathsep}/sbin")


def nginx_row(run: Run, upstream_port: int) -> None:
    nginx = nginx_binary()
    if nginx is None:
        run.notes.append("(e) skipped: nginx is not installed (Debian: apt-get install nginx-light).")
        print("  e: skipped, no nginx", flush=True)
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="annotation-proxy-bench-nginx-") as workdir:
        conf = Path(workdir) / "nginx.conf"
        conf.write_text(NGINX_CONF % {"dir": workdir, "upstream": upstream_port, "port": port, "token": LEGACY_TOKEN})
        base = f"http://{LOOPBACK}:{port}"
        command = [nginx, "-p", workdir, "-c", str(conf), "-e", "stderr"]
        with running(command, url=f"{base}/healthz", what="nginx") as pid:
            for annotation_id in range(1, HOT_IDS + 1):
                for _ in range(2):
                    with urllib.request.urlopen(f"{base}/api/annotations/{annotation_id}/", timeout=5) as answer:  # noqa: S310
                        answer.read()
            run.measure(
                "e", f"nginx proxy_cache, hits over {HOT_IDS} ids (outside reference)", base, hot_script, server=pid
            )


# --- Report ---------------------------------------------------------------------------------------------------------


def version_of(command: list[str], pattern: str = r"[\d]+\.[\d.]+") -> str:
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    match = re.search(pattern, output.stdout + output.stderr)
    return match.group(0) if match else "unknown"


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    cpu = models[0] if models else platform.processor() or "unknown CPU"
    redis_server = version_of(["redis-server", "--version"], r"v=[0-9.]+").removeprefix("v=")
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; Python {platform.python_version()} "
        f"({interpreter()}), "
        f"aiohttp {version('aiohttp')}, uvloop {version('uvloop')}, httptools {package_version('httptools')}, "
        f"redis-py {version('redis')}, redis-server {redis_server}, wrk {version_of(['wrk', '-v'])}, "
        f"nginx {version_of([nginx_binary() or 'nginx', '-v'])}"
    )


def interpreter() -> str:
    """The interpreter every server of the run is on, past its virtualenv: the build matters as much as the
    version (Makefile: BENCH_PYTHON)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def required(run: Run, *names: str) -> list[Row]:
    rows = [run.row(name) for name in names]
    missing = [f"({name})" for name, row in zip(names, rows, strict=True) if row is None]
    if missing:
        raise SetupError(f"the report needs {', '.join(missing)}, which did not run")
    return [row for row in rows if row is not None]


def table(run: Run) -> str:
    [base] = required(run, BASELINE)
    lines = [
        f"| row | what | requests/s | vs ({BASELINE}) | p50 ms | p99 ms | p99 vs ({BASELINE}) | bytes/response "
        "| server CPU us/request | others, % of a CPU | proxy max RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in run.rows:
        r = row.result
        rss = f"{row.rss / MiB:.0f} MiB" if row.rss else ""
        others = f"{row.cpu.others:.0f}" + (" **busy**" if row.busy else "")
        lines.append(
            f"| ({row.name}) | {row.what} | {r.rps:,.0f} | {r.rps / base.result.rps:.2f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.p99_ms / base.result.p99_ms:.2f} | {r.bytes_per_response:,.0f} | "
            f"{row.cpu.server_us:.0f} | {others} | {rss} |"
        )
    return "\n".join(lines)


def against_nginx(run: Run) -> str:
    """The line under the table: the proxy's Redis hits against nginx's, in requests/s and CPU per request."""
    c, e = run.row("c"), run.row("e")
    if c is None or e is None:
        return ""
    return (
        f"Proxy hits (c) are {c.result.rps / e.result.rps:.2f} of nginx's (e) requests/s, at "
        f"{c.cpu.server_us / max(e.cpu.server_us, 0.1):.1f}x its CPU per request "
        f"({c.cpu.server_us:.0f} us against {e.cpu.server_us:.0f} us)."
    )


def one_connection_note(run: Run) -> str:
    """The line on (a'-1) and (c-1): what a request costs when it arrives at an idle server."""
    a, c = run.row(f"{BASELINE}-1"), run.row("c-1")
    if a is None or c is None:
        return ""
    ratio = c.cpu.server_us / a.cpu.server_us
    return (
        f"One request at a time, each waking an idle server: the baseline ({a.name}) takes {a.cpu.server_us:.0f} us "
        f"of CPU a request, a proxy hit ({c.name}) {c.cpu.server_us:.0f} us ({ratio:.1f}x), against the "
        "32-connection rows' figures above; the cold rows' requests arrive that way."
    )


def cold_floor_note(run: Run) -> str:
    """The line on (d1): the proxy's cold misses against aiohttp's own pass-through of the same misses."""
    d0, d1, d, d2 = (run.row(name) for name in ("d0", "d1", "d", "d2"))
    if d0 is None or d1 is None or d is None or d2 is None:
        return ""
    base = d0.result.p50_ms
    return (
        f"Cold misses against their floor: (d1), aiohttp's server and client with nothing else, adds "
        f"{d1.result.p50_ms - base:+.2f} ms to (d0)'s p50 and takes {d1.cpu.server_us:.0f} us of CPU a "
        f"miss; the proxy adds {d.result.p50_ms - base:+.2f} ms in process (d) and {d2.result.p50_ms - base:+.2f} ms "
        f"with Redis (d2), at {d.cpu.server_us / d1.cpu.server_us:.1f}x and "
        f"{d2.cpu.server_us / d1.cpu.server_us:.1f}x the floor's CPU a miss."
    )


def redis_apart_note(run: Run) -> str:
    """The line on (d3): the Redis cold row with redis-server off the proxy's CPU, against (d2)."""
    d0, d2, apart = (run.row(name) for name in ("d0", "d2", "d3"))
    if d0 is None or d2 is None or apart is None:
        return ""
    base = d0.result.p50_ms
    return (
        f"With redis-server kept off the proxy's CPU (d3), the Redis row adds {apart.result.p50_ms - base:+.2f} ms "
        f"to (d0)'s p50 at {apart.cpu.server_us:.0f} us a miss, against (d2)'s {d2.result.p50_ms - base:+.2f} ms at "
        f"{d2.cpu.server_us:.0f} us with it left free (measured one after the other: the host's drift between the "
        "two rows counts too)."
    )


def paired_note(run: Run) -> str:
    """The line on :func:`paired_hits`: each proxy hit row against (a') pair by pair, beside the table's single
    rows."""
    if not run.pairs:
        return ""
    rows = []
    for name, pairs in run.pairs.items():
        rps, p99 = zip(*pairs, strict=True)
        rows.append(
            f"({name}) at {_series(rps)} of ({BASELINE})'s requests/s (median {statistics.median(rps):.2f}), "
            f"p99 at {_series(p99, 'x')} (median {statistics.median(p99):.2f}x)"
        )
    return (
        f"Paired: each proxy hit row and ({BASELINE}) measured alternately, {PAIR_SECONDS:g} s each time, both "
        f"servers up, each alone on the CPU as in the rows: {'; '.join(rows)}. How far the rows' ratio moves "
        "between runs seconds apart on this machine."
    )


def _series(ratios: Iterable[float], unit: str = "") -> str:
    """Ratios as the notes list them: two decimals each, comma-separated."""
    return ", ".join(f"{ratio:.2f}{unit}" for ratio in ratios)


def together_note(run: Run) -> str:
    """The line on :func:`together_hits`' rounds, both servers loaded at once."""
    if not run.together:
        return ""
    rows = []
    for name, rounds in run.together.items():
        rps, cpu = zip(*rounds, strict=True)
        rows.append(
            f"({name}) at {_series(rps)} of ({BASELINE})'s requests/s (median {statistics.median(rps):.2f}; "
            f"({BASELINE})'s CPU per request over its: {_series(cpu)})"
        )
    return (
        f"Together: each proxy hit row and ({BASELINE}) up at once on the same CPU, each loaded by its own wrk, "
        f"{TOGETHER} times {PAIR_SECONDS:g} s: {'; '.join(rows)}. Both servers live through the same moments of the "
        "machine, so a host whose speed drifts moves both alike: the steadiest ratio here, though not the targets'. "
        "On the twenty-first round's host, sharing a CPU cost the in-process proxy (b) more CPU a hit than the "
        "baseline (37-46% more against 20-28%), in one measurement mostly for its access lines "
        "(docs/performance-log.md, the twenty-first round)."
    )


def busy_note(run: Run) -> str:
    busy = [f"({row.name})" for row in run.rows if row.busy]
    if not busy:
        return ""
    return (
        f"**busy**: during {', '.join(busy)} processes outside the benchmark took more than {BUSY_LIMIT:.0f}% of a "
        "CPU twice running: those figures are not to be trusted."
    )


def hit_target(run: Run, row: Row, baseline: Row, ratio: float, aim: str = "") -> tuple[bool, str]:
    """A hit row's requests/s against the baseline's: met only when the rows' ratio and, where measured, the
    median of the rounds loaded together both reach ``ratio``. A baseline row measured in a slow moment of the
    machine makes the rows' ratio pass alone (1.54 for (c) in one run, where together gave 0.65-0.68)."""

    def met(value: float) -> bool:
        return value >= ratio

    rows = row.result.rps / baseline.result.rps
    text = f"({row.name}) >= {ratio:g} of ({BASELINE}) requests/s{aim}: {figure(rows, met)} in the rows"
    together = [each for each, _ in run.together.get(row.name, [])]
    if not together:
        return met(rows), text
    median = statistics.median(together)
    return met(rows) and met(median), f"{text}, {figure(median, met)} together"


def figure(value: float, met: Callable[[float], bool], *, digits: int = 2, sign: str = "") -> str:
    """``value`` to ``digits`` decimals, or as many more (up to three more) as it takes for the printed figure to
    meet its target (``met``) exactly when ``value`` does: 0.797 is not "0.80" beside a FAIL of ">= 0.8", nor
    1.004 ms "1.00" beside a FAIL of "<= 1 ms". ``sign``: "+" to print one on positive figures too."""
    for places in range(digits, digits + 4):
        text = f"{value:{sign}.{places}f}"
        if met(float(text)) == met(value):
            break
    return text


def targets(run: Run) -> list[tuple[bool, str]]:
    """The acceptance lines of the performance issue; its (a) is row (a') here."""
    a, b, c, d0, d, d2 = required(run, BASELINE, "b", "c", "d0", "d", "d2")
    peak = max(row.rss or 0 for row in run.rows)
    added = [row.result.p50_ms - d0.result.p50_ms for row in (d, d2)]
    cold_cpu = [d.cpu.server_us, d2.cpu.server_us]
    p99 = c.result.p99_ms / a.result.p99_ms
    d1 = run.row("d1")  # what aiohttp alone makes of a miss, beside the targets: not part of them
    floor_ms = f"; the floor (d1): {d1.result.p50_ms - d0.result.p50_ms:+.2f} ms" if d1 else ""
    floor_us = f"; the floor (d1): {d1.cpu.server_us:.0f} us" if d1 else ""
    return [
        hit_target(run, c, a, 0.8, " (aim 1.0)"),
        (p99 <= 2, f"(c) p99 <= 2x ({BASELINE})'s: {figure(p99, lambda x: x <= 2)}x"),
        hit_target(run, b, a, 0.9),
        (
            all(ms <= 1.0 for ms in added),
            "cold misses add <= 1 ms to (d0)'s p50, in-process (d) and Redis (d2): "
            + ", ".join(f"{figure(ms, lambda x: x <= 1.0, sign='+')} ms" for ms in added)
            + floor_ms,
        ),
        (
            all(us <= 300 for us in cold_cpu),
            "proxy CPU per cold miss <= 300 us, (d) and (d2): "
            + ", ".join(f"{figure(us, lambda x: x <= 300, digits=0)} us" for us in cold_cpu)
            + floor_us,
        ),
        (
            peak < 100 * MiB,
            f"proxy RSS < 100 MB through the run: peak {figure(peak / MiB, lambda x: x < 100, digits=0)} MiB",
        ),
    ]


def report(run: Run, command: str, started: datetime, wall: float) -> str:
    checks = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {text}" for ok, text in targets(run))
    lines = [against_nginx(run), one_connection_note(run), cold_floor_note(run), redis_apart_note(run)]
    lines += [paired_note(run), together_note(run), busy_note(run), *run.notes]
    notes = "".join(f"\n{note}\n" for note in lines if note)
    hits = hit_table(run)
    if hits:
        hits = (
            "\nWhere a hit's CPU goes (`bench/hit_costs.py`: the proxy's own work per hit, each part timed alone in a "
            "process built as the proxy is, on requests made in process and a transport that only counts bytes):\n\n"
            f"{hits}\n"
        )
    misses = miss_table(run)
    if misses:
        misses = (
            "\nWhere a cold miss's CPU goes (`bench/miss_costs.py`: each part run alone in a process built as the "
            "proxy is, 16 at a time against the same upstream; the last row less the others is the rest):\n\n"
            f"{misses}\n"
        )
    redis = "; redis-server not pinned, except in (d3) (CPU 0)" if run.row("d3") else ""
    return (
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `{command}` ({wall:.0f} s).\n\n"
        f"Machine: {machine()}.\n\n"
        f"wrk: {THREADS} thread, {CONNECTIONS} connections ({COLD_CONNECTIONS} for the cold rows), "
        f"{run.seconds:g} s per row after a warm-up run; servers pinned to CPU 1, wrk (and the upstream of the "
        f"cold rows) to CPU 0 with taskset where available{redis}. Hits cycle over {HOT_IDS} ids; cold rows ask ids "
        "never asked before; the upstream adds "
        f"{LATENCY * 1000:.0f} ms. Server CPU: the row's server process (user and system time, from /proc) over "
        "the measured run, per request wrk counted. Others: the CPU that processes outside the benchmark took "
        f"meanwhile; above {BUSY_LIMIT:.0f}% of a CPU the row was measured once more. The targets' baseline, the "
        f"issue's (a) (aiohttp web.Application, one route, uvloop), is row ({BASELINE}).\n\n"
        f"{table(run)}\n{notes}\nTargets (a hit ratio is met only when the rows' ratio and the Together line's "
        f"median both meet it):\n\n{checks}\n{hits}{misses}"
    )


def write_doc(text: str) -> None:
    DOC.parent.mkdir(exist_ok=True)
    current = DOC.read_text() if DOC.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in current or END not in current:
        current += f"\n{BEGIN}\n{END}\n"
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


# --- The in-process parts (bench/hit_costs.py, bench/miss_costs.py) -----------------------------------------------


def fake_upstream_beside(stack: ExitStack, *, latency: float = 0.0) -> str:
    """For a script that builds the proxy in its own process: the proxy's default settings (this process's
    environment cleared of everything else, since Settings reads it) and the fake upstream on CPU 0, on uvloop,
    until ``stack`` closes. Returns the upstream's URL."""
    for name in os.environ.keys() - clean_environment().keys():
        del os.environ[name]
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    stack.enter_context(
        running(upstream(port, latency=latency, uvloop=True), url=f"{url}/health", what="upstream", cpu=0)
    )
    return url


def on_the_proxy_cpu() -> None:
    """This process on CPU 1, the proxy's in the bench (processes it starts later inherit it)."""
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})


def cpu_seconds() -> float:
    """This process's CPU time so far, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def figures_of(run: Run, script: str) -> dict[str, Any]:
    """``bench/<script> --json``'s figures, or none and a note when it fails (the rows measured so far are kept)."""
    command = [sys.executable, str(ROOT / "bench" / script), "--json"]
    env = clean_environment() | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, env=env)
    try:
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (ValueError, IndexError):
        figures = {}
    if not figures:
        print(done.stderr, file=sys.stderr)
        run.notes.append(f"bench/{script} failed (exit status {done.returncode}); its table is missing.")
    return figures


def hit_table(run: Run) -> str:
    """Where the CPU of a hit goes: bench/hit_costs.py's parts of the proxy's own work, the rest of row (b), and
    what a hit could cost at the target."""
    row, base = run.row("b"), run.row(BASELINE)
    parts = run.hit_parts
    if not parts or row is None or base is None:
        return ""
    own = parts["own work"]
    edge = own - parts["handler"] - parts["write"] - parts["access line"]
    total = row.cpu.server_us
    lines = [
        ("the handler: the key, the id, the hot tier, the headers, the body", parts["handler"]),
        ("the answer serialized and handed to the transport (`DirectResponse.prepare`)", parts["write"]),
        ("the access line, recorded, formatted and flushed", parts["access line"]),
        ("the front door and the edge: request id, timing, headers, metrics (the own work less the above)", edge),
        ("**the proxy's own work**", own),
        ("aiohttp's server, uvloop and the system calls (the row's CPU less the own work)", total - own),
        ("**the row's CPU per hit**", total),
    ]
    at_target = base.cpu.server_us / 0.8
    return "\n".join(
        [
            "| part of a hit, CPU us | (b) in-process store |",
            "|---|---:|",
            *(f"| {label} | {us:.1f} |" for label, us in lines),
            "",
            f"At 0.8 of ({BASELINE})'s requests/s, a hit could take about {at_target:.0f} us of CPU (the baseline's "
            f"{base.cpu.server_us:.0f} us / 0.8): {at_target - (total - own):.1f} us for the proxy's own work beside "
            f"what aiohttp, uvloop and the system calls take of this row, against {own:.1f} us measured.",
        ]
    )


MISS_PARTS = {  # bench/miss_costs.py's parts that make up its lookup
    "client": "the upstream client: breaker, slots, aiohttp's client, the request and the answer",
    "entry": "the body validated and made an entry: pydantic, the created_ago span, the ETag",
    "store read": "the store's read with the claim",
    "store write": "the store's write with the claim's release (a cold id's first version: announced to nobody)",
}


def miss_table(run: Run) -> str:
    """Where the CPU of a cold miss goes: bench/miss_costs.py's parts, and what is left of rows (d) and (d2)."""
    columns = [(run.row("d"), "in-process store"), (run.row("d2"), "Redis")]
    if not run.miss_parts or any(row is None for row, _ in columns):
        return ""
    lines: list[tuple[str, list[float]]] = []
    for part, label in MISS_PARTS.items():
        lines.append((label, [run.miss_parts[store][part] for _, store in columns]))
    parts = [run.miss_parts[store] for _, store in columns]
    lines.append(
        (
            "the rest of the lookup: the load, coalescing, metrics, timeouts, and what its parts cost more run "
            "together, each on a loop the upstream's pace left idle, than alone",
            [each["lookup"] - sum(each[part] for part in MISS_PARTS) for each in parts],
        )
    )
    lines.append(("the first rendering of the body", [each["render"] for each in parts]))
    totals = [row.cpu.server_us for row, _ in columns if row is not None]
    lines.append(
        (
            "the rest: aiohttp's server, the edge, the handler, the response and the access line, on an idle loop "
            "(the row's CPU less the above)",
            [total - each["lookup"] - each["render"] for total, each in zip(totals, parts, strict=True)],
        )
    )
    lines.append(("**the row's CPU per miss**", totals))
    header = "| part of a cold miss, CPU us | " + " | ".join(f"({row.name}) {store}" for row, store in columns if row)
    return "\n".join(
        [
            header + " |",
            "|---|---:|---:|",
            *(f"| {label} | " + " | ".join(f"{us:.0f}" for us in values) + " |" for label, values in lines),
        ]
    )


def all_rows(run: Run) -> None:
    reference_rows(run)
    with ExitStack() as stack:
        hot_upstream, slow_upstream = free_port(), free_port()
        stack.enter_context(
            running(
                upstream(hot_upstream, uvloop=True), url=f"http://{LOOPBACK}:{hot_upstream}/health", what="upstream"
            )
        )
        slow_pid = stack.enter_context(
            running(
                upstream(slow_upstream, latency=LATENCY, uvloop=True),
                url=f"http://{LOOPBACK}:{slow_upstream}/health",
                what="upstream",
                cpu=0,  # with wrk, which is light at cold rates: the proxy (or nginx) keeps CPU 1 to itself
            )
        )
        proxy_hit_rows(run, hot_upstream)
        upstream_cold_row(run, slow_upstream, slow_pid)
        cold_floor_row(run, slow_upstream)
        proxy_cold_rows(run, slow_upstream)
        nginx_row(run, slow_upstream)
    large_body_rows(run)
    run.hit_parts = figures_of(run, "hit_costs.py")
    run.miss_parts = figures_of(run, "miss_costs.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured row (default 10)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/performance.md alone")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk; make bench installs it)", file=sys.stderr)
        return 2
    started, clock = datetime.now(UTC), time.monotonic()
    run = Run(seconds=args.duration)
    try:
        all_rows(run)
        command = "make bench" if os.environ.get("MAKELEVEL") else "python bench/run.py " + " ".join(sys.argv[1:])
        text = report(run, command.strip(), started, time.monotonic() - clock)
    except (SetupError, subprocess.CalledProcessError, OSError) as exc:
        print(f"bench: set-up failed: {exc}", file=sys.stderr)
        return 2
    print("\n" + text)
    if not args.no_doc:
        write_doc(text)
        print(f"written to {DOC.relative_to(ROOT)}")
    return 1 if args.check and not all(ok for ok, _ in targets(run)) else 0


if __name__ == "__main__":
    sys.exit(main())

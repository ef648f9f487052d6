"""The hit-path benchmark: the proxy against aiohttp's own limit, on loopback, one row after another.

    make bench                                  (or: PYTHONPATH=. python bench/run.py [--duration 10] [--check])

Rows, each measured with wrk after a short warm-up run, the same way (threads, connections, CPU pinning):

    (a)  a bare aiohttp server returning the annotation's 855 bytes: the framework's limit here
    (a') the same on uvloop, for reference
    (b)  the proxy, cache hits, in-process store
    (c)  the proxy, cache hits, Redis (a private redis-server on a free port)
    (d0) the fake upstream itself, cold ids, with a fixed added latency
    (d)  the proxy, cold misses over ids never asked before, against that upstream
    (e)  nginx proxy_cache, hits, in front of the same upstream (skipped when nginx is not installed)
    (f)  the proxy, cache hits, Redis, a 20 KB annotation (about 60 regions), no Accept-Encoding
    (g)  the same with ``Accept-Encoding: gzip`` (what the SDK and httpx send): the body gzipped once per rendering

The proxy runs as a user gets it: ``python -m proxy`` with client keys on, metrics on, logging at INFO to a file.
Hits cycle over HOT_IDS annotations, warmed first (a hit is checked by its Cache-Status before measuring). With
``taskset``, servers run on CPU 1 and wrk on CPU 0 (with the upstream of the cold rows). The proxy's resident
set size is sampled every 0.2 s while it runs. Prints one markdown table and the targets of the performance issue,
and rewrites the part of docs/performance.md between its markers. Exit status: 0 when the run completed (1 with
``--check`` when a target fails), 2 when the set-up failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from bench.soak import proc_rss
from bench.upstream import LEGACY_TOKEN
from tests.support.ports import free_port
from tests.support.redis_servers import running_redis

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
LOOPBACK = "127.0.0.1"
CLIENT_KEY = "bench-client-key-0123456789abcdef"
HOT_IDS = 100
LARGE_BODY = 20_000  # (f) and (g): a realistic large annotation
LATENCY = 0.020  # the fake upstream's added latency for (d0), (d) and (e)
THREADS, CONNECTIONS, COLD_CONNECTIONS = 1, 32, 16
MiB = 1024 * 1024


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


def pinned(cpu: int, command: list[str]) -> list[str]:
    """``command`` on one CPU, when taskset exists and the machine has two or more."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *command]
    return command


def wrk(url: str, script: str, *, seconds: float, connections: int) -> WrkResult:
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
        output = subprocess.run(pinned(0, [*command, url]), capture_output=True, text=True, check=True).stdout
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


@contextmanager
def running(
    command: list[str], *, url: str, what: str, env: dict[str, str] | None = None, cpu: int = 1
) -> Iterator[int]:
    """A server process on ``cpu`` until the block ends; yields its pid."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(pinned(cpu, command), env=env, stdout=log, stderr=log, cwd=ROOT)
        try:
            wait_for(url, process, what)
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


def proxy_env(upstream_port: int, port: int, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "LABEL_STUDIO_", "REDIS_"))}
    env |= {
        "PYTHONPATH": str(ROOT),
        "LABEL_STUDIO_URL": f"http://{LOOPBACK}:{upstream_port}",
        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
        "PROXY_PORT": str(port),
        "PROXY_CLIENT_KEYS": CLIENT_KEY,
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


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
    rss: int | None = None


@dataclass
class Run:
    seconds: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def measure(self, name: str, what: str, url: str, script: str, connections: int = CONNECTIONS) -> Row:
        wrk(url, script, seconds=min(2.0, self.seconds), connections=connections)  # warm-up
        row = Row(name, what, wrk(url, script, seconds=self.seconds, connections=connections))
        self.rows.append(row)
        print(f"  {name}: {row.result.rps:,.0f} requests/s, p50 {row.result.p50_ms:.2f} ms", flush=True)
        return row

    def row(self, name: str) -> Row | None:
        return next((row for row in self.rows if row.name == name), None)


def hot_script(accept_encoding: str | None = None) -> str:
    more = f', ["Accept-Encoding"] = "{accept_encoding}"' if accept_encoding else ""
    return HOT_SCRIPT % {"ids": HOT_IDS, "auth": f"Token {CLIENT_KEY}", "more": more}


def cold_script(start: int) -> str:
    return COLD_SCRIPT % {"start": start, "auth": f"Token {CLIENT_KEY}"}


def bare_rows(run: Run) -> None:
    for name, uvloop in (("a", False), ("a'", True)):
        port = free_port()
        url = f"http://{LOOPBACK}:{port}/api/annotations/1/"
        with running(upstream(port, constant=True, uvloop=uvloop), url=url, what="bare aiohttp"):
            loop = "uvloop" if uvloop else "asyncio's loop"
            run.measure(
                name, f"bare aiohttp handler, the same 855 bytes, {loop}", f"http://{LOOPBACK}:{port}", hot_script()
            )


def proxy_hit_rows(run: Run, upstream_port: int) -> None:
    with running_redis() as redis:
        for name, redis_url, store in (("b", None, "in-process store"), ("c", redis.url, "Redis")):
            port = free_port()
            base = f"http://{LOOPBACK}:{port}"
            env = proxy_env(upstream_port, port, redis_url)
            with running([sys.executable, "-m", "proxy"], url=f"{base}/healthz", what="the proxy", env=env) as pid:
                warm_hits(base)
                with RssSampler(pid) as rss:
                    row = run.measure(name, f"proxy, hits over {HOT_IDS} ids, {store}", base, hot_script())
                row.rss = rss.peak


def large_body_rows(run: Run) -> None:
    """(f) and (g): hits of a 20 KB annotation from Redis, as they are and gzipped."""
    upstream_port, port = free_port(), free_port()
    base = f"http://{LOOPBACK}:{port}"
    command = [*upstream(upstream_port, uvloop=True), "--body-bytes", str(LARGE_BODY)]
    with (
        running_redis() as redis,
        running(command, url=f"http://{LOOPBACK}:{upstream_port}/health", what="upstream", cpu=0),
        running(
            [sys.executable, "-m", "proxy"],
            url=f"{base}/healthz",
            what="the proxy",
            env=proxy_env(upstream_port, port, redis.url),
        ) as pid,
    ):
        warm_hits(base)
        with RssSampler(pid) as rss:
            for name, coding in (("f", None), ("g", "gzip")):
                what = f"proxy, hits, Redis, {LARGE_BODY // 1000} KB body, " + (
                    "gzipped (Accept-Encoding: gzip)" if coding else "no Accept-Encoding"
                )
                row = run.measure(name, what, base, hot_script(coding))
        row.rss = rss.peak


def cold_rows(run: Run, upstream_port: int) -> None:
    start = 10**6
    run.measure(
        "d0",
        f"fake upstream itself, {LATENCY * 1000:.0f} ms added",
        f"http://{LOOPBACK}:{upstream_port}",
        cold_script(start).replace(f'"Token {CLIENT_KEY}"', f'"Token {LEGACY_TOKEN}"'),
        connections=COLD_CONNECTIONS,
    )
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    env = proxy_env(upstream_port, port, None)
    with running([sys.executable, "-m", "proxy"], url=f"{base}/healthz", what="the proxy", env=env) as pid:
        with RssSampler(pid) as rss:
            # The warm-up walks other ids than the run: every measured request is a miss.
            wrk(base, cold_script(2 * 10**6), seconds=min(2.0, run.seconds), connections=COLD_CONNECTIONS)
            row = Row(
                "d",
                "proxy, cold misses (new ids), in-process store",
                wrk(base, cold_script(3 * 10**6), seconds=run.seconds, connections=COLD_CONNECTIONS),
            )
            run.rows.append(row)
            print(f"  d: {row.result.rps:,.0f} requests/s, p50 {row.result.p50_ms:.2f} ms", flush=True)
        row.rss = rss.peak


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


def nginx_row(run: Run, upstream_port: int) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        run.notes.append("(e) skipped: nginx is not installed (Debian: apt-get install nginx-light).")
        print("  e: skipped, no nginx", flush=True)
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="annotation-proxy-bench-nginx-") as workdir:
        conf = Path(workdir) / "nginx.conf"
        conf.write_text(NGINX_CONF % {"dir": workdir, "upstream": upstream_port, "port": port, "token": LEGACY_TOKEN})
        base = f"http://{LOOPBACK}:{port}"
        with running([nginx, "-p", workdir, "-c", str(conf), "-e", "stderr"], url=f"{base}/healthz", what="nginx"):
            for annotation_id in range(1, HOT_IDS + 1):
                for _ in range(2):
                    with urllib.request.urlopen(f"{base}/api/annotations/{annotation_id}/", timeout=5) as answer:  # noqa: S310
                        answer.read()
            run.measure("e", f"nginx proxy_cache, hits over {HOT_IDS} ids (outside reference)", base, hot_script())


# --- Report ---------------------------------------------------------------------------------------------------------


def version_of(command: list[str], pattern: str = r"[\d]+\.[\d.]+") -> str:
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    match = re.search(pattern, output.stdout + output.stderr)
    return match.group(0) if match else "unknown"


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    cpu = models[0] if models else platform.processor() or "unknown CPU"
    redis_server = version_of(["redis-server", "--version"], r"v=[0-9.]+").removeprefix("v=")
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; Python {platform.python_version()}, "
        f"aiohttp {version('aiohttp')}, uvloop {version('uvloop')}, redis-py {version('redis')}, "
        f"redis-server {redis_server}, wrk {version_of(['wrk', '-v'])}, nginx {version_of(['nginx', '-v'])}"
    )


def table(run: Run) -> str:
    base = run.row("a")
    assert base is not None
    lines = [
        "| row | what | requests/s | vs (a) | p50 ms | p99 ms | p99 vs (a) | bytes/response | proxy max RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in run.rows:
        r = row.result
        rss = f"{row.rss / MiB:.0f} MiB" if row.rss else ""
        lines.append(
            f"| ({row.name}) | {row.what} | {r.rps:,.0f} | {r.rps / base.result.rps:.2f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.p99_ms / base.result.p99_ms:.2f} | {r.bytes_per_response:,.0f} | {rss} |"
        )
    return "\n".join(lines)


def targets(run: Run) -> list[tuple[bool, str]]:
    rows = [run.row(name) for name in ("a", "b", "c", "d0", "d")]
    if any(row is None for row in rows):
        raise SetupError("a row is missing: the targets need (a), (b), (c), (d0) and (d)")
    a, b, c, d0, d = (row for row in rows if row is not None)
    peak = max(row.rss or 0 for row in run.rows)
    added = d.result.p50_ms - d0.result.p50_ms
    return [
        (c.result.rps >= 0.8 * a.result.rps, f"(c) >= 0.8 of (a) requests/s: {c.result.rps / a.result.rps:.2f}"),
        (c.result.p99_ms <= 2 * a.result.p99_ms, f"(c) p99 <= 2x (a)'s: {c.result.p99_ms / a.result.p99_ms:.2f}x"),
        (b.result.rps >= 0.85 * a.result.rps, f"(b) >= 0.85 of (a) requests/s: {b.result.rps / a.result.rps:.2f}"),
        (added <= 1.0, f"(d) adds <= 1 ms to the upstream's p50: {added:+.2f} ms"),
        (peak < 100 * MiB, f"proxy RSS < 100 MB through the run: peak {peak / MiB:.0f} MiB"),
    ]


def report(run: Run, command: str, started: datetime, wall: float) -> str:
    checks = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {text}" for ok, text in targets(run))
    notes = "".join(f"\n{note}\n" for note in run.notes)
    return (
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `{command}` ({wall:.0f} s).\n\n"
        f"Machine: {machine()}.\n\n"
        f"wrk: {THREADS} thread, {CONNECTIONS} connections ({COLD_CONNECTIONS} for the cold rows), "
        f"{run.seconds:g} s per row after a warm-up run; servers pinned to CPU 1, wrk (and the upstream of the "
        "cold rows) to CPU 0 with taskset "
        f"where available. Hits cycle over {HOT_IDS} ids; cold rows ask ids never asked before; the upstream adds "
        f"{LATENCY * 1000:.0f} ms.\n\n{table(run)}\n{notes}\nTargets:\n\n{checks}\n"
    )


def write_doc(text: str) -> None:
    DOC.parent.mkdir(exist_ok=True)
    current = DOC.read_text() if DOC.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in current or END not in current:
        current += f"\n{BEGIN}\n{END}\n"
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


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
        bare_rows(run)
        with ExitStack() as stack:
            hot_upstream, slow_upstream = free_port(), free_port()
            stack.enter_context(
                running(
                    upstream(hot_upstream, uvloop=True), url=f"http://{LOOPBACK}:{hot_upstream}/health", what="upstream"
                )
            )
            stack.enter_context(
                running(
                    upstream(slow_upstream, latency=LATENCY, uvloop=True),
                    url=f"http://{LOOPBACK}:{slow_upstream}/health",
                    what="upstream",
                    cpu=0,  # with wrk, which is light at cold rates: the proxy (or nginx) keeps CPU 1 to itself
                )
            )
            proxy_hit_rows(run, hot_upstream)
            cold_rows(run, slow_upstream)
            nginx_row(run, slow_upstream)
        large_body_rows(run)
    except (SetupError, subprocess.CalledProcessError, OSError) as exc:
        print(f"bench: set-up failed: {exc}", file=sys.stderr)
        return 2
    command = "make bench" if os.environ.get("MAKELEVEL") else "python bench/run.py " + " ".join(sys.argv[1:])
    text = report(run, command.strip(), started, time.monotonic() - clock)
    print("\n" + text)
    if not args.no_doc:
        write_doc(text)
        print(f"written to {DOC.relative_to(ROOT)}")
    return 1 if args.check and not all(ok for ok, _ in targets(run)) else 0


if __name__ == "__main__":
    sys.exit(main())

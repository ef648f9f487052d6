"""The proxy as a real process (``python -m proxy``): started, waited for, asked and stopped; and an app served on
a fixed port (a server back where it was)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from tests.support.cache_status import status_of
from tests.support.metrics_text import parse_metrics
from tests.support.ports import free_port
from tests.support.proxies import CLIENT_KEY

START_TIMEOUT = 30.0
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10.0)  # ten times the PROXY_UPSTREAM_TIMEOUT of the chaos tests

FETCHED = "annotation-proxy; fwd=miss"  # Cache-Status of an answer fetched from Label Studio now
REFETCHED = "annotation-proxy; fwd=stale"  # the same, in place of a copy held past its freshness (RFC 9211)
HIT = "annotation-proxy; hit"
STALE_IF_ERROR = "annotation-proxy; hit; detail=stale-if-error"

ERROR_FIELDS = frozenset({"id", "status_code", "version", "detail", "exc_info"})

SETTING_PREFIXES = ("PROXY_", "LABEL_STUDIO_", "REDIS_")  # what proxy/settings.py reads


async def wait_until_healthy(base: str, process: asyncio.subprocess.Process) -> None:
    """Poll ``{base}/healthz`` until it answers 200; fail at once if the process exits first."""
    async with aiohttp.ClientSession() as session:
        for _ in range(int(START_TIMEOUT / 0.05)):
            if process.returncode is not None:
                raise AssertionError(f"the proxy exited with {process.returncode}")
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)  # polling for start-up, not a timing assertion
    raise AssertionError("the proxy did not become healthy")


@asynccontextmanager
async def serving(app: web.Application, port: int, host: str = "127.0.0.1") -> AsyncIterator[None]:
    """``app`` listening on ``host:port`` (a fixed port: a server back where it was) until the block ends."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class Answer:
    status: int
    cache_status: str
    body: bytes

    def error_shape_problem(self) -> str | None:
        """Why this is not Label Studio's error shape, or None if it is."""
        try:
            error = json.loads(self.body)
        except ValueError:
            return f"a {self.status} that is not JSON: {self.body[:200]!r}"
        if not isinstance(error, dict) or set(error) != ERROR_FIELDS or error["status_code"] != self.status:
            return f"a {self.status} not in Label Studio's error shape: {self.body[:200]!r}"
        return None


@dataclass
class ProxyProcess:
    base: str
    process: asyncio.subprocess.Process
    log: Path

    async def get(
        self, session: aiohttp.ClientSession, annotation_id: int, *, expand: bool = False
    ) -> Answer | Exception:
        """One annotation request; what went wrong on the way, if anything, instead of raising it."""
        query = "?expand=completed_by" if expand else ""
        try:
            async with session.get(
                f"{self.base}/api/annotations/{annotation_id}/{query}",
                headers={"Authorization": f"Token {CLIENT_KEY}"},
                timeout=CLIENT_TIMEOUT,
            ) as response:
                return Answer(response.status, status_of(response.headers), await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            return exc

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(f"{self.base}/metrics", timeout=CLIENT_TIMEOUT) as response:
            assert response.status == 200
            return parse_metrics(await response.text())

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def clean_environment() -> dict[str, str]:
    """This process's environment without the proxy's own settings (``PROXY_*``, ``LABEL_STUDIO_*``,
    ``REDIS_*``): a proxy started with it runs on its defaults and on what the caller adds."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}


@asynccontextmanager
async def proxy_process(upstream: URL, token: str, log: Path, **settings: str) -> AsyncIterator[ProxyProcess]:
    """``python -m proxy`` in front of ``upstream``, configured by its environment; SIGTERM at the end.

    Its log goes to a file (a pipe nobody reads would fill up and stall the proxy under load).
    """
    port = free_port()
    env = clean_environment() | {
        "LABEL_STUDIO_URL": str(upstream),
        "LABEL_STUDIO_API_KEY": token,
        "PROXY_PORT": str(port),
        "PROXY_CLIENT_KEYS": CLIENT_KEY,
        "PROXY_LOG_LEVEL": "WARNING",
        "PROXY_SHUTDOWN_TIMEOUT": "3",
        **settings,
    }
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", env=env, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink
        )
    proxy = ProxyProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        await wait_until_healthy(proxy.base, process)
        yield proxy
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()

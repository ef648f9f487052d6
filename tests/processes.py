"""Helpers for tests that run the proxy as a real process (test_process, test_chaos, test_image, ...)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

START_TIMEOUT = 30.0


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

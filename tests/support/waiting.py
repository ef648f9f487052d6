"""Waiting for a condition, polled with a deadline: never a timing assertion."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for ``condition`` to hold, checking between event-loop turns (a condition, not a timing assert)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {limit} s")
        await asyncio.sleep(0.005)


async def poll_until(condition: Callable[[], Awaitable[bool]], limit: float) -> None:
    """Await ``condition()`` until it is true (polled, a deadline, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {limit} s")
        await asyncio.sleep(0.1)

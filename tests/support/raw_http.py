"""HTTP/1.1 written byte for byte, for requests the test client would normalise or refuse, and the answer as read."""

from __future__ import annotations

import asyncio

HANG_GUARD = 10.0  # seconds; only so that a broken server fails the test instead of hanging it


async def exchange(host: str, port: int, raw: bytes) -> bytes:
    """Write ``raw`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        async with asyncio.timeout(HANG_GUARD):
            return await reader.read()
    finally:
        writer.close()

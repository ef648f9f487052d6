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


def head_of(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """The status line, the header lines as (name, value) in order, and what follows the head."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, [tuple(line.split(b": ", 1)) for line in lines], rest  # type: ignore[misc]


def framed(stream: bytes) -> list[tuple[bytes, list[tuple[bytes, bytes]], bytes]]:
    """Consecutive HTTP/1.1 responses framed by Content-Length (none for a 304): status line, header lines in
    order, body."""
    out = []
    while stream:
        status, lines, stream = head_of(stream)
        length = 0 if b" 304 " in status else int(dict(lines)[b"Content-Length"])
        out.append((status, lines, stream[:length]))
        stream = stream[length:]
    return out


def answers(stream: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """:func:`framed`, each response's headers as a dictionary."""
    return [(status, dict(lines), body) for status, lines, body in framed(stream)]


def request_line(path: str, *more: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: proxy", *more, "", ""]).encode()

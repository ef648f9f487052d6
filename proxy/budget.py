"""The proxy's memory budget: every in-process structure that holds bodies, bounded in bytes, added up in one place.

A hostile caller (or an unlucky workload) decides which annotations the proxy holds, and how large they are; what
it cannot decide is how much memory the proxy uses. Each part below has a byte bound, and :func:`memory_budget`
adds them up, so that the start-up log, docs/memory.md and a container's memory limit can be compared:

- the in-process store (``PROXY_MEMORY_CACHE_MAX_BYTES``; none with Redis);
- the hot tier (``PROXY_HOT_MAX_BYTES``);
- the rendered-body memo (``PROXY_RENDER_MAX_BYTES``);
- the answer memo: hot hits' answers, serialized (a quarter of ``PROXY_RENDER_MAX_BYTES``, beside it; each
  counts its body, though the body is most often the render memo's own bytes object);
- upstream bodies being read and validated (``PROXY_INFLIGHT_MAX_BYTES``): a body costs :data:`BODY_FACTOR`
  times its size while it is read (chunks, then the joined bytes) and parsed (pydantic's Python objects are
  about six times the JSON's size for annotation results), and a fetch waits for its share before it reads;
- webhook bodies being read and parsed: one at a time, the same factor (``PROXY_WEBHOOK_MAX_BYTES``);
- the process itself: the interpreter, the libraries and connection buffers (:data:`BASELINE_BYTES`, measured).

Bodies being written to callers are the cached bytes themselves (shared, not copied) or a rendered copy from the
memo. :class:`ByteBudget` is the gate for the transient parts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024

# Bytes of memory a body of N bytes costs while it is read, validated and stored: aiohttp's buffer, the chunks and
# the joined body (up to 3N), the parsed JSON (about 6N for annotation results: a 6.2x peak measured with
# tracemalloc on a 4.6 MB body of 70,000 regions) and its encoding for the store (N once the parse is freed).
BODY_FACTOR = 10
# The process with nothing cached: CPython, aiohttp, pydantic, redis-py, uvloop, prometheus-client (59 MiB RSS
# after start-up, measured), with room for the buffers of a few hundred connections.
BASELINE_BYTES = 80 * MiB
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")


@dataclass(frozen=True)
class MemoryBudget:
    baseline: int
    memory_store: int
    hot_tier: int
    render_memo: int
    answer_memo: int
    upstream_bodies: int
    webhook_bodies: int

    @property
    def total(self) -> int:
        return (
            self.baseline
            + self.memory_store
            + self.hot_tier
            + self.render_memo
            + self.answer_memo
            + self.upstream_bodies
            + self.webhook_bodies
        )

    def in_mib(self) -> dict[str, int]:
        """Each part and the total, in MiB (rounded up), for the start-up log."""
        parts = {name: getattr(self, name) for name in self.__dataclass_fields__} | {"total": self.total}
        return {name: -(-value // MiB) for name, value in parts.items()}


def answer_memo_bytes(render_bytes: int) -> int:
    """The answer memo's bound (proxy/answers.py): a quarter of the render memo's."""
    return render_bytes // 4


def memory_budget(
    *,
    memory_store_bytes: int,
    hot_bytes: int,
    render_bytes: int,
    inflight_bytes: int,
    webhook_max_bytes: int,
) -> MemoryBudget:
    return MemoryBudget(
        baseline=BASELINE_BYTES,
        memory_store=memory_store_bytes,
        hot_tier=hot_bytes,
        render_memo=render_bytes,
        answer_memo=answer_memo_bytes(render_bytes),
        upstream_bodies=inflight_bytes,
        webhook_bodies=BODY_FACTOR * webhook_max_bytes,
    )


def container_memory_limit(path: Path = CGROUP_MEMORY_MAX) -> int | None:
    """The cgroup v2 memory limit of this process's container, or None (no limit, or not known here)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class ByteBudget:
    """At most ``capacity`` bytes reserved at once; a reservation that does not fit waits until it does.

    Whatever fits is granted, in arrival order among those that fit: a small body never queues behind a large one
    that waits for room (a caller asking for many large annotations slows its own requests, not everyone's). A
    reservation larger than the whole capacity is cut to it, so nothing waits forever for room that cannot
    exist; the waiting itself is bounded by the caller's deadline. Single event loop, no locks needed.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reserved = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def lease(self, size: int) -> Lease:
        """Reserve ``size`` bytes (waiting for room); give them back with :meth:`Lease.release`."""
        size = min(size, self.capacity)
        await self._acquire(size)
        return Lease(self, size)

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        lease = await self.lease(size)
        try:
            yield
        finally:
            lease.release()

    async def _acquire(self, size: int) -> None:
        if self.reserved + size <= self.capacity:
            self.reserved += size
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back(size)  # granted just as it was cancelled
            else:
                self._waiters.remove((size, waiter))
                self._wake()
            raise

    def give_back(self, size: int) -> None:
        """Bytes a :class:`Lease` held (call :meth:`Lease.release`, which gives them back once)."""
        self.reserved -= size
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._waiters):
            size, waiter = entry
            if self.reserved + size <= self.capacity:
                self._waiters.remove(entry)
                self.reserved += size
                waiter.set_result(None)


class Lease:
    """Bytes reserved in a :class:`ByteBudget`; :meth:`release` gives them back (once, however often called)."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget: ByteBudget | None = budget
        self.size = size

    def keep(self, size: int) -> None:
        """Give back all but ``size`` bytes now (what is left of a read once its buffers are gone)."""
        if self._budget is not None and size < self.size:
            self._budget.give_back(self.size - size)
            self.size = size

    def release(self) -> None:
        if self._budget is not None:
            self._budget.give_back(self.size)
            self._budget = None

"""Label Studio's connection slots, shared fairly between callers.

At most ``slots`` requests to Label Studio are in flight at once (``PROXY_UPSTREAM_MAX_CONNECTIONS``). When all
are taken, requests wait in one line per caller, and each slot that frees goes to the next caller in turn, not
to the oldest request: a caller with a thousand uncached ids waiting gets one slot in each round, and another
caller's one request gets the next slot that frees, not the thousand-and-first.

Who the caller is comes from :data:`CALLER`, set by the annotation route to the client key's number (None for
anonymous callers, and for work no request started) before the lookup. A load runs in a task started within a
request, so it carries that request's caller (asyncio tasks copy the context they are created in).
Single event loop, no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from contextvars import ContextVar

CALLER: ContextVar[Hashable] = ContextVar("annotation_proxy_caller", default=None)


class FairSlots:
    def __init__(self, slots: int) -> None:
        self._free = slots
        # The callers with requests waiting, in the order they are served next (a dict keeps insertion order).
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}

    def locked(self) -> bool:
        """Whether a request would wait for a slot now."""
        return self._free == 0 or bool(self._waiting)

    async def acquire(self) -> None:
        """A slot for the current caller (:data:`CALLER`), at once when one is free and nobody waits."""
        if not self.locked():
            self._free -= 1
            return
        caller = CALLER.get()
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(caller, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as it was cancelled: pass the slot on
            else:
                self._forget(caller, granted)
            raise

    def release(self) -> None:
        """Give a slot back: to the next caller in turn that waits, else to the free ones."""
        while self._waiting:
            caller = next(iter(self._waiting))
            queue = self._waiting.pop(caller)
            granted = queue.popleft()
            if queue:
                self._waiting[caller] = queue  # to the back of the line, behind every other waiting caller
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1

    def _forget(self, caller: Hashable, granted: asyncio.Future[None]) -> None:
        queue = self._waiting.get(caller)
        if queue is None:
            return
        try:
            queue.remove(granted)
        except ValueError:
            return
        if not queue:
            del self._waiting[caller]

"""Label Studio's connection slots, shared fairly between callers.

At most ``slots`` requests to Label Studio are in flight at once (``PROXY_UPSTREAM_MAX_CONNECTIONS``). When all
are taken, requests wait in one line per caller, and each slot that frees goes to the next caller in turn, not
to the oldest request: a caller with a thousand uncached ids waiting gets one slot in each round, and another
caller's one request gets the next slot that frees, not the thousand-and-first.

Who the caller is comes from :data:`CALLER`, set by the annotation route to the client key's number (None for
anonymous callers, and for work no request started) before the lookup. A load runs in a task started within a
request, so it carries that request's caller (asyncio tasks copy the context they are created in).

A load is shared: requests of other callers join it (:mod:`proxy.loads`). Its :class:`Party` (:data:`PARTY`) is
every caller it is for, and its wait for a slot stands in each of their lines: it goes out at the first of their
turns, so that a caller whose request joined another's load waits for its own turn, not at the back of a line that
caller may have filled on purpose. Single event loop, no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import Any, TypeVar

CALLER: ContextVar[Hashable] = ContextVar("annotation_proxy_caller", default=None)


class Party:
    """The callers one load is for: the one that started it, then those whose requests joined it."""

    __slots__ = ("_slots", "_waiting", "callers")

    def __init__(self, caller: Hashable) -> None:
        self.callers = [caller]  # as many as there are client keys, at most
        self._slots: FairSlots | None = None  # while a wait for a slot stands: where, and the wait
        self._waiting: asyncio.Future[None] | None = None

    def join(self, caller: Hashable) -> None:
        """``caller``'s request joined the load: a wait for a slot standing now, or later, is in its line too."""
        if caller in self.callers:
            return
        self.callers.append(caller)
        if self._slots is not None and self._waiting is not None and not self._waiting.done():
            self._slots.line_up(caller, self._waiting)

    def waits(self, slots: FairSlots | None, granted: asyncio.Future[None] | None) -> None:
        """The load's wait for a slot of ``slots`` (None, None: it waits no more)."""
        self._slots, self._waiting = slots, granted


# The party of the load running in this context (None outside loads: one caller, CALLER).
PARTY: ContextVar[Party | None] = ContextVar("annotation_proxy_party", default=None)

T = TypeVar("T")


class Parties:
    """The party of each load in flight (:mod:`proxy.loads`)."""

    def __init__(self) -> None:
        self._of: dict[asyncio.Task[Any], Party] = {}

    def start(self, start: Callable[[], asyncio.Task[T]]) -> asyncio.Task[T]:
        """The load ``start`` starts, for the current caller: its task copies the context it is created in, so
        :data:`PARTY` is set there for as long as it runs."""
        party = Party(CALLER.get())
        token = PARTY.set(party)
        try:
            task = start()
        finally:
            PARTY.reset(token)
        self._of[task] = party
        task.add_done_callback(self._of.pop)
        return task

    def join(self, task: asyncio.Task[Any]) -> None:
        """The current caller's request joined ``task``'s load: it lends the load its turn."""
        party = self._of.get(task)
        if party is not None:
            party.join(CALLER.get())


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
        party = PARTY.get() or Party(CALLER.get())
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for caller in party.callers:
            self.line_up(caller, granted)
        party.waits(self, granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as it was cancelled: pass the slot on
            raise
        finally:
            party.waits(None, None)
            if len(party.callers) > 1 or not granted.done() or granted.cancelled():
                for caller in party.callers:  # out of every line: it left, or a turn in one granted it
                    self._forget(caller, granted)

    def line_up(self, caller: Hashable, granted: asyncio.Future[None]) -> None:
        """Put a wait in ``caller``'s line (a load's wait stands in the line of each caller it is for: the first
        turn grants it, and :meth:`release` passes over it in the others)."""
        self._waiting.setdefault(caller, deque()).append(granted)

    def release(self) -> None:
        """Give a slot back: to the next caller in turn that waits, else to the free ones."""
        while self._waiting:
            caller = next(iter(self._waiting))
            queue = self._waiting[caller]
            granted = queue.popleft()
            if granted.done():  # gone, or a shared load's granted in another line this tick: not this caller's turn
                if not queue:
                    del self._waiting[caller]
                continue
            del self._waiting[caller]
            if queue:
                self._waiting[caller] = queue  # to the back of the line, behind every other waiting caller
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

"""In-process single flight: one load per key at a time; every request for the key joins it.

A load is an asyncio task. Requests for a key that has a load in flight wait for it (shielded: one that goes
away does not cancel the others') and share its result or its failure. A newer load can take a key over (after
a change, requests must not join a fetch that may have left before it); the one it replaced still runs to its
end, unjoinable. :meth:`SingleFlight.close` cancels them all at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._joinable: dict[K, asyncio.Task[V]] = {}  # the load a request for a key joins
        self._running: set[asyncio.Task[V]] = set()  # every load running, joinable or superseded

    def __contains__(self, key: K) -> bool:
        return key in self._joinable

    def joinable(self, key: K) -> asyncio.Task[V] | None:
        return self._joinable.get(key)

    def start(
        self,
        key: K,
        load: Coroutine[Any, Any, V],
        *,
        name: str,
        finished: Callable[[asyncio.Task[V]], None] | None = None,
    ) -> asyncio.Task[V]:
        """Run ``load`` as the load that requests for ``key`` join from now on; ``finished`` hears its end."""
        task = asyncio.create_task(load, name=name)
        self._joinable[key] = task
        self._running.add(task)

        def done(task: asyncio.Task[V]) -> None:
            self._running.discard(task)
            if self._joinable.get(key) is task:
                del self._joinable[key]
            if finished is not None:
                finished(task)

        task.add_done_callback(done)
        return task

    def detach(self, key: K) -> asyncio.Task[V] | None:
        """Let no request join ``key``'s load from now on (it runs to its end for those that did): the one detached."""
        return self._joinable.pop(key, None)

    async def close(self) -> None:
        """Cancel every load still running and wait for them (at shutdown)."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""Calls of one Lua script made in the same turn of the event loop, sent to Redis together: one pipeline on one
connection, one write and one read, instead of a round trip each.

Cold misses come in bursts (a dashboard opening a page of annotations; callers in step with Label Studio's pace),
and each makes a read and a write: redis-py's machinery per command (the pool, the timeout, the retry wrapper, the
parser's call) and the wake-up for each reply cost more than the round trip itself. Batched, the bench's cold
misses with Redis (16 at a time) cost 6-14% less CPU each (docs/performance-log.md, the eleventh round).

Nothing waits to fill a batch: the calls made while the loop runs its ready callbacks go out as soon as they have
run, and a call made alone goes out alone, as a plain script call. The answers are those of the same calls made one
by one: a pipeline keeps their order on its connection, an error answers only the call that caused it (a script
missing after a flush or a failover is loaded and the call made again), and a broken connection fails the calls
that were on it, as it fails a single command.

Calls on the wire at once are bounded as without batching, by the pool's connections: a read's answer may hold an
entry of up to 256 KiB (proxy/cache/redis_store.py), so the bound is what keeps the memory budget's "process" part
true (docs/memory.md). A cluster client is not batched: its pipelines split by slot and node, with redirections of
their own; its calls stay plain script calls (:func:`batched`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Argument = str | int | bytes


class ScriptCall(Protocol):
    """A script call as redis-py's ``AsyncScript`` takes it: the answer, or the error Redis gave."""

    def __call__(self, keys: Sequence[str], args: Sequence[Argument]) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class _Call:
    keys: Sequence[str]
    args: Sequence[Argument]
    future: asyncio.Future[Any]  # the caller's: cancelled when the caller leaves


class BatchedScript:
    """``script``'s calls, sent in batches: at most ``limit`` calls on the wire at once, the rest queued."""

    def __init__(self, client: Redis, script: AsyncScript, *, limit: int) -> None:
        self._client = client
        self._script = script
        self._limit = limit
        self._queued: list[_Call] = []
        self._on_the_wire = 0
        self._scheduled = False  # a batch is about to start, which the calls made now will join
        self._batches: set[asyncio.Task[None]] = set()  # held, so that none is collected before it ends

    def __call__(self, keys: Sequence[str], args: Sequence[Argument]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append(_Call(keys, args, future))
        if not self._scheduled:
            self._schedule()
        return future

    def _schedule(self) -> None:
        """A batch, which starts after the callbacks ready now have run: the calls they make join it."""
        self._scheduled = True
        task = asyncio.get_running_loop().create_task(self._send(), name="redis-batch")
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _send(self) -> None:
        self._scheduled = False
        calls = [call for call in self._queued if not call.future.done()]  # a caller that left sends nothing
        room = self._limit - self._on_the_wire
        if room <= 0 or not calls:  # at the bound: the next batch starts when one on the wire has its answers
            self._queued = calls
            return
        batch, self._queued = calls[:room], calls[room:]
        self._on_the_wire += len(batch)
        try:
            answers = await self._run(batch)
        except Exception as exc:  # noqa: BLE001 - the connection failed: every call on it fails, as one alone would
            answers = [exc] * len(batch)
        except BaseException:  # cancelled (the loop is closing): so are the calls, and none starts after it
            for call in batch + self._queued:
                call.future.cancel()
            self._queued = []
            raise
        finally:
            self._on_the_wire -= len(batch)
            if self._queued and not self._scheduled:
                self._schedule()
        for call, answer in zip(batch, answers, strict=True):
            if call.future.done():  # its caller left
                continue
            if isinstance(answer, Exception):
                call.future.set_exception(answer)
            else:
                call.future.set_result(answer)

    async def _run(self, batch: list[_Call]) -> list[Any]:
        if len(batch) == 1:  # alone: a plain call, which loads the script itself when Redis lacks it
            call = batch[0]
            try:
                return [await self._script(keys=call.keys, args=call.args)]
            except Exception as exc:  # noqa: BLE001 - Redis's answer to this call: the caller's to raise
                return [exc]
        pipeline = self._client.pipeline(transaction=False)
        for call in batch:
            pipeline.evalsha(self._script.sha, len(call.keys), *call.keys, *call.args)
        answers: list[Any] = await pipeline.execute(raise_on_error=False)
        for index, answer in enumerate(answers):
            if isinstance(answer, NoScriptError):  # a flushed or failed-over Redis: loaded by the plain call
                call = batch[index]
                try:
                    answers[index] = await self._script(keys=call.keys, args=call.args)
                except Exception as exc:  # noqa: BLE001 - as above
                    answers[index] = exc
        return answers


def batched(client: Redis | RedisCluster, script: AsyncScript) -> ScriptCall:
    """``script``'s calls batched on a standalone or Sentinel client; as they are on a cluster client."""
    if isinstance(client, RedisCluster):
        return script
    return BatchedScript(client, script, limit=client.connection_pool.max_connections)

"""Calls of one Lua script made in the same turn of the event loop, sent to Redis together: one write on one
connection, and their answers read in order, instead of a round trip each.

Cold misses come in bursts (a dashboard opening a page of annotations; callers in step with Label Studio's pace),
and each makes a read and a write: redis-py's machinery per command (the pool, the timeout, the retry wrapper, the
parser's call) and the wake-up for each reply cost more than the round trip itself. Batched, the bench's cold
misses with Redis (16 at a time) cost 6-14% less CPU each (docs/performance-log.md, the eleventh round).

Nothing waits to fill a batch: the calls made while the loop runs its ready callbacks go out as soon as they have
run, and a call made alone goes out alone. What Redis answers is what each call alone would have had: one
connection keeps the calls' order, an error Redis gives answers only the call that caused it, and a script missing
after a flush or a failover is loaded once (SCRIPT LOAD) and the calls that missed it made again, together.

Failures stay what they were with a connection per call:

- a broken or timed-out connection fails the calls on it that Redis had not answered, and counts once: the first
  of them still awaited has the failure, the others :class:`SharedFailure`, which the store's circuit breaker does
  not count. The calls Redis answered before keep their answers;
- a batch's answers all come within one socket timeout (PROXY_REDIS_TIMEOUT) of its write, as a call's alone would:
  those still unread then fail, as a call alone would have timed out;
- a call that finds the bound reached (below) waits for room as a command waits for a pooled connection: up to
  the pool's timeout, then fails with "No connection available" (its batch then waits for a connection as any
  command does);
- a caller that leaves before its batch starts sends nothing. One that leaves later may still have its call sent,
  as a command already written is; a claim granted to it lapses with its ttl.

Calls on the wire at once are bounded per script by the pool's connections, as commands were: a read's answer may
hold an entry of up to 256 KiB (proxy/cache/redis_store.py), so that bound is what keeps the reads' answers
within the memory budget's "process" part (docs/memory.md). A call with an argument over 256 KiB (a large
entry's write, whose answer is a number) goes alone, outside that count, bounded by the pool as any command is,
so that sending it within the socket timeout concerns no other call. A cluster client is not batched: its
commands go by slot and node, with redirections of their own (:func:`batched`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.cache.topology import WaitingConnectionPool

if TYPE_CHECKING:
    from redis._parsers import Encoder  # a connection's, named for its annotation only

Argument = str | int | bytes
ALONE_BYTES = 256 * 1024  # a call with a larger argument goes alone
EXPIRY_SLACK = 0.001  # seconds: a timer fires within a millisecond of its time
SHARED_BYTES = 6000  # a longer word is written from its own bytes, not copied into the command's (redis-py's cutoff)


class ScriptCall(Protocol):
    """A script call as redis-py's ``AsyncScript`` takes it: the answer, or the error Redis gave."""

    def __call__(self, keys: Sequence[str], args: Sequence[Argument]) -> Awaitable[Any]: ...


class SharedFailure(RedisError):
    """The connection this call's batch went out on failed; another call of the batch has that failure, which the
    circuit breaker counts once for all of them."""


@dataclass(frozen=True, slots=True)
class _Call:
    keys: Sequence[str]
    args: Sequence[Argument]
    future: asyncio.Future[Any]  # the caller's: cancelled when the caller leaves
    since: float  # when it was made, on the loop's clock


class BatchedScript:
    """``script``'s calls, sent in batches: at most ``limit`` calls on the wire at once, the rest waiting (up to
    ``wait`` seconds, or for as long as it takes when None)."""

    def __init__(self, client: Redis, script: AsyncScript, *, limit: int, wait: float | None) -> None:
        self._client = client
        self._script = script
        self._sha = script.sha.encode()
        self._limit = max(1, limit)
        self._wait = wait
        self._queued: list[_Call] = []  # oldest first
        self._on_the_wire = 0
        self._next: asyncio.Task[None] | None = None  # the batch about to start, which the calls made now join
        self._batches: set[asyncio.Task[None]] = set()  # held, so that none is collected before it ends
        self._expiry: asyncio.TimerHandle | None = None  # when the oldest waiting call gives up

    def __call__(self, keys: Sequence[str], args: Sequence[Argument]) -> Awaitable[Any]:
        if any(isinstance(arg, bytes) and len(arg) > ALONE_BYTES for arg in args):
            return self._script(keys=keys, args=args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append(_Call(keys, args, future, loop.time()))
        if self._next is None:
            self._schedule()
        return future

    def _schedule(self) -> None:
        """A batch, which starts after the callbacks ready now have run: the calls they make join it. (So not
        under an eager task factory, which would start it at once: the proxy's loop, uvloop's, has none.)"""
        self._next = asyncio.get_running_loop().create_task(self._send(), name="redis-batch")
        self._batches.add(self._next)
        self._next.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if task is self._next:  # cancelled before it started (the loop closing)
            self._next = None
            self._cancel([])

    def _cancel(self, batch: list[_Call]) -> None:
        """The loop is closing: ``batch``'s calls and the waiting ones go with it, and no batch starts after."""
        for call in batch + self._queued:
            call.future.cancel()
        self._queued = []

    async def _send(self) -> None:
        self._next = None
        calls = [call for call in self._queued if not call.future.done()]  # a caller that left sends nothing
        room = max(0, self._limit - self._on_the_wire)
        batch, self._queued = calls[:room], calls[room:]
        self._expire_in_time()  # the rest wait for the next batch, as commands wait for a pooled connection
        if not batch:
            return
        self._on_the_wire += len(batch)
        try:
            answers = await self._run(batch)
        except Exception as exc:  # noqa: BLE001 - the connection failed: every call on it fails, counted once
            answers = _failed(batch, exc)
        except BaseException:  # cancelled
            self._cancel(batch)
            raise
        finally:
            self._on_the_wire -= len(batch)
            if self._queued and self._next is None:
                self._schedule()
        for call, answer in zip(batch, answers, strict=True):
            if call.future.done():  # its caller left
                continue
            if isinstance(answer, Exception):
                call.future.set_exception(answer)
            else:
                call.future.set_result(answer)

    async def _run(self, batch: list[_Call]) -> list[Any]:
        answers = await self._exchange(batch)
        again = [
            index
            for index, answer in enumerate(answers)
            if isinstance(answer, NoScriptError) and not batch[index].future.done()  # a caller that left: not again
        ]
        if again:
            failure = _failure_in(answers)
            if failure is None:
                await self._again(batch, answers, again)
            else:  # the connection failed after Redis answered them: not made again on a Redis just failing
                for index in again:
                    answers[index] = _shared(failure)  # the batch's one failure is counted once, as it was
        return answers

    async def _again(self, batch: list[_Call], answers: list[Any], again: list[int]) -> None:
        """The calls at ``again`` found no script (a flushed or failed-over Redis): it is loaded, and they go again
        together. Answers Redis gave the other calls stand whatever happens to these."""
        calls = [batch[index] for index in again]
        try:
            await self._client.script_load(self._script.script)
            redone = await self._exchange(calls)
        except Exception as exc:  # noqa: BLE001 - the connection failed: these calls fail, counted once
            redone = _failed(calls, exc)
        for index, answer in zip(again, redone, strict=True):
            answers[index] = answer

    async def _exchange(self, calls: list[_Call]) -> list[Any]:
        """The calls' EVALSHAs in one write on one pooled connection, and their answers read in order
        (:func:`_answers`): each an answer, the error Redis gave it, or the failure of the connection.

        What a redis-py pipeline does, without its command stack, its per-word encoder, its retry wrapper and its
        observability hooks: 10-13% of a Redis miss's CPU (docs/performance-log.md, the fifteenth round). Nothing is
        lost with the wrapper: the clients batched here retry nothing (proxy/cache/topology.py). The connection
        does what it does for any command: connects, checks its health when due, bounds the write by the socket
        timeout, and closes itself when the write or a read fails or is cancelled, so that no answer left unread
        on it reaches the next call made on it.
        """
        pool = self._client.connection_pool
        connection: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            chunks: list[bytes] = []
            for call in calls:
                _evalsha(chunks, self._sha, call, connection.encoder)
            await connection.send_packed_command(chunks)
            return await _answers(connection, calls)
        finally:
            # Given back whatever happens to this task meanwhile, as redis-py's pipeline gives its connection back.
            await asyncio.shield(pool.release(connection))

    def _expire_in_time(self) -> None:
        """Have the oldest waiting call give up at its time, unless a batch takes it first."""
        if self._wait is None or self._expiry is not None or not self._queued:
            return
        self._expiry = asyncio.get_running_loop().call_at(self._queued[0].since + self._wait, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        now = asyncio.get_running_loop().time()
        assert self._wait is not None  # noqa: S101 - armed only with a wait
        waiting = []
        for call in self._queued:
            if call.future.done():
                continue
            if call.since + self._wait <= now + EXPIRY_SLACK:
                call.future.set_exception(RedisConnectionError("No connection available."))
            else:
                waiting.append(call)
        self._queued = waiting
        self._expire_in_time()


async def _answers(connection: AbstractConnection, calls: list[_Call]) -> list[Any]:
    """The answers to ``calls``, written on ``connection``, read in order: each an answer or the error Redis gave
    it, all within one socket timeout of the write, as a call alone has its answer within one timeout of its own
    write. (Each read timed on its own, as redis-py times them, would let a Redis that answers each call just within
    the timeout keep the last call of a batch waiting for all of them, far past PROXY_REDIS_TIMEOUT.)

    When the time is up or the connection fails, the calls Redis answered keep their answers and the others fail,
    counted once (:func:`_failed`). redis-py closes a connection whose read failed or was interrupted, so no answer
    is left unread on it for the next call made on it.

    Each read keeps redis-py's own timeout too, a second timer per call, which this one fires before.
    Without it (``timeout=math.inf``), redis-py would answer None for a socket's own ETIMEDOUT, which is Python's
    ``TimeoutError`` as asyncio's is, instead of closing the connection and raising.
    """
    answers: list[Any] = []
    try:
        async with asyncio.timeout(connection.socket_timeout):
            for _ in calls:
                try:
                    answers.append(await connection.read_response())
                except ResponseError as exc:  # this call's alone: the connection stays in step
                    answers.append(exc)
    except TimeoutError:
        return answers + _failed(calls[len(answers) :], RedisTimeoutError("Timeout reading from Redis"))
    except Exception as exc:  # noqa: BLE001 - the connection failed: the calls still unanswered fail, counted once
        return answers + _failed(calls[len(answers) :], exc)
    return answers


def _evalsha(chunks: list[bytes], sha: bytes, call: _Call, encoder: Encoder) -> None:
    """``EVALSHA sha numkeys key... arg...`` added to ``chunks`` in RESP: the bytes redis-py's packer writes for it,
    with a word longer than ``SHARED_BYTES`` (an entry's body) a chunk of its own, as there, sent without a copy.
    Each word's type is looked at once, the store's own three first (a fifth less CPU than a chain of isinstance)."""
    words: tuple[Any, ...] = (b"EVALSHA", sha, b"%d" % len(call.keys), *call.keys, *call.args)
    encoding, errors = encoder.encoding, encoder.encoding_errors
    head = [b"*%d\r\n" % len(words)]
    for word in words:
        kind = type(word)
        data: bytes
        if kind is bytes:
            data = word
        elif kind is str:
            data = word.encode(encoding, errors)
        elif kind is int:
            data = b"%d" % word
        else:  # anything else as redis-py takes it, or refuses it (DataError): a subclass, a float, a bool
            data = encoder.encode(word)  # type: ignore[no-untyped-call]
        if len(data) > SHARED_BYTES:
            head.append(b"$%d\r\n" % len(data))
            chunks += (b"".join(head), data)
            head = [b"\r\n"]
        else:
            head.append(b"$%d\r\n%b\r\n" % (len(data), data))
    chunks.append(b"".join(head))


def _failed(calls: list[_Call], failure: Exception) -> list[Exception]:
    """What ``calls`` answer when the connection they went out on failed: the failure itself for the first call
    still awaited, counted by the circuit breaker once for all of them, and a :class:`SharedFailure` for the
    others."""
    answers: list[Exception] = []
    counted = False
    for call in calls:
        if counted or call.future.done():
            answers.append(_shared(failure))
        else:
            answers.append(failure)
            counted = True
    return answers


def _failure_in(answers: list[Any]) -> Exception | None:
    """The failure of the connection among a batch's answers, if it failed (an error Redis gave a call is none)."""
    return next((a for a in answers if isinstance(a, Exception) and not isinstance(a, ResponseError)), None)


def _shared(failure: Exception) -> SharedFailure:
    shared = SharedFailure(f"the connection of this call's batch failed ({type(failure).__name__})")
    shared.__cause__ = failure
    return shared


def batched(client: Redis | RedisCluster, script: AsyncScript) -> ScriptCall:
    """``script``'s calls batched on a standalone or Sentinel client; as they are on a cluster client."""
    if isinstance(client, RedisCluster):
        return script
    pool = client.connection_pool
    wait = pool.wait if isinstance(pool, WaitingConnectionPool) else None
    return BatchedScript(client, script, limit=pool.max_connections, wait=wait)

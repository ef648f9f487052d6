"""Script calls made in one turn of the event loop go to a real redis-server together, each caller gets the answer
its own call would have had alone, and Redis failing costs what it cost with a connection per call
(proxy/cache/batching.py)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Connection, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.breaker import CircuitBreaker, State
from proxy.cache import AnnotationKey, KeyScheme, RedisStore, Variant
from proxy.cache.batching import ALONE_BYTES, BatchedScript, ScriptCall, SharedFailure, _Call, _evalsha, batched
from proxy.cache.breaker import CircuitBreakingStore
from proxy.cache.topology import connect
from proxy.errors import CacheError
from tests.support.redis_monitor import recorded_commands
from tests.support.redis_servers import RedisServer, running_redis

# Counts its calls in KEYS[1] and answers ARGV[1] with that count: each call's own answer, and a trace in Redis of
# every call that ran.
ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1] .. ':' .. redis.call('GET', KEYS[1])"
# Fails on a key that holds no number, as a script meeting a wrong type in Redis does.
INCREMENT = "return redis.call('INCR', KEYS[1])"
# Answers ARGV[1].
ANSWER = "return ARGV[1]"
CONNECTIONS = 8
SHA = b"0" * 40


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with running_redis() as redis_server:  # its own: some tests stop it
        yield redis_server


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    redis, close = connect(server.url, "standalone", timeout=2.0, max_connections=CONNECTIONS)
    assert isinstance(redis, Redis)
    yield redis
    await close()


async def connections(server: RedisServer) -> int:
    """The clients connected to ``server``, besides the one asking."""
    async with Redis.from_url(server.url) as admin:
        listed: list[Any] = await admin.client_list()
    return len(listed) - 1


class HeldExchanges:
    """The batches' exchanges with Redis (one write, then the answers), each held before it is sent until
    ``release``: what is on the wire stays there. A call with an argument over ALONE_BYTES makes none (it goes as
    a plain call); one that finds the script missing makes two, before and after its SCRIPT LOAD."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.released = asyncio.Event()
        exchange: Callable[[BatchedScript, list[Any]], Awaitable[list[Any]]] = BatchedScript._exchange

        async def held(script: BatchedScript, calls: list[Any]) -> list[Any]:
            self.sizes.append(len(calls))
            await self.released.wait()
            return await exchange(script, calls)

        monkeypatch.setattr(BatchedScript, "_exchange", held)


async def turns(count: int = 10) -> None:
    """Let the loop run ``count`` turns: whatever was ready has run."""
    for _ in range(count):
        await asyncio.sleep(0)


async def three_on_the_wire(client: Redis, monkeypatch: pytest.MonkeyPatch) -> tuple[HeldExchanges, list[Any]]:
    """Three calls of a loaded script sent in one exchange, held on the wire: the holder, and the callers' futures."""
    echo = batched(client, client.register_script(ECHO))
    await echo(keys=["loaded"], args=["alone"])  # the script loaded: the exchange finds it
    held = HeldExchanges(monkeypatch)
    calls = [echo(keys=["calls"], args=[f"call{n}"]) for n in range(3)]
    await turns()
    assert held.sizes == [3]
    assert all(isinstance(call, asyncio.Future) for call in calls)
    return held, calls


async def test_a_burst_of_calls_shares_one_connection(client: Redis, server: RedisServer) -> None:
    echo = batched(client, client.register_script(ECHO))
    answers = await asyncio.gather(*(echo(keys=["calls"], args=[f"call{n}"]) for n in range(16)))
    assert [answer.decode() for answer in answers] == [f"call{n}:{n + 1}" for n in range(16)]  # in order, each its own
    assert await connections(server) == 1  # one call at a time would have opened 16


async def test_calls_from_tasks_woken_together_share_a_batch(client: Redis, server: RedisServer) -> None:
    echo = batched(client, client.register_script(ECHO))
    start = asyncio.Event()

    async def caller(n: int) -> bytes:
        await start.wait()  # all woken in one turn of the loop, as requests arriving together are
        answer: bytes = await echo(keys=["calls"], args=[f"task{n}"])
        return answer

    callers = [asyncio.create_task(caller(n)) for n in range(6)]
    await turns()
    start.set()
    answers = await asyncio.gather(*callers)
    assert [answer.split(b":")[0] for answer in answers] == [b"task%d" % n for n in range(6)]  # each its own answer
    assert sorted(int(answer.split(b":")[1]) for answer in answers) == list(range(1, 7))
    assert await connections(server) == 1


async def test_an_error_answers_only_the_call_that_caused_it(client: Redis) -> None:
    await client.set("words", "not a number")
    increment = batched(client, client.register_script(INCREMENT))
    answers = await asyncio.gather(
        increment(keys=["a"], args=[]),
        increment(keys=["words"], args=[]),
        increment(keys=["a"], args=[]),
        return_exceptions=True,
    )
    assert answers[0] == 1
    assert isinstance(answers[1], ResponseError)
    assert "not an integer" in str(answers[1])
    assert answers[2] == 2


async def test_a_script_flushed_from_redis_is_loaded_again_and_each_call_answered(
    client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = batched(client, client.register_script(ECHO))
    await echo(keys=["calls"], args=["first"])  # loaded
    await client.script_flush()  # as after a restart without persistence or a failover
    held = HeldExchanges(monkeypatch)
    held.released.set()
    answers = await asyncio.gather(*(echo(keys=["calls"], args=[f"call{n}"]) for n in range(5)))
    assert sorted(answer.decode() for answer in answers) == sorted(f"call{n}:{n + 2}" for n in range(5))
    assert await client.get("calls") == b"6"  # each call ran once
    assert held.sizes == [5, 5]  # all five missed the script; it was loaded, and the five went again together


async def test_a_caller_that_left_before_its_batch_went_out_sends_nothing(client: Redis) -> None:
    echo = batched(client, client.register_script(ECHO))
    kept = echo(keys=["calls"], args=["kept"])
    left = echo(keys=["calls"], args=["left"])
    assert isinstance(left, asyncio.Future)
    left.cancel()  # its request went away: a claim it would have made must not be granted to no one
    assert await kept == b"kept:1"
    assert await client.get("calls") == b"1"


async def test_a_caller_that_leaves_while_its_batch_is_on_the_wire_leaves_the_others_their_answers(
    client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, calls = await three_on_the_wire(client, monkeypatch)
    calls[1].cancel()
    held.released.set()
    async with asyncio.timeout(10):  # a guard against hanging, not a measurement
        answers = [await calls[0], await calls[2]]
    assert answers == [b"call0:1", b"call2:3"]  # the call that left was sent: the second
    assert held.sizes == [3]


async def test_no_more_calls_are_on_the_wire_at_once_than_the_limit(
    client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = BatchedScript(client, client.register_script(ECHO), limit=3, wait=None)
    await echo(keys=["loaded"], args=["alone"])  # the script loaded: the exchanges find it
    held = HeldExchanges(monkeypatch)
    first = [echo(keys=["calls"], args=[f"call{n}"]) for n in range(3)]
    await turns()
    later = [echo(keys=["calls"], args=[f"call{n}"]) for n in range(3, 7)]
    await turns()
    assert held.sizes == [3]  # the later calls wait: three are on the wire
    assert await client.get("calls") is None
    held.released.set()
    answers = await asyncio.gather(*first, *later)
    assert sorted(int(answer.split(b":")[1]) for answer in answers) == list(range(1, 8))
    assert held.sizes == [3, 3, 1]  # then three more, and the last alone


async def test_a_call_with_a_large_argument_goes_alone(client: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    length = batched(client, client.register_script("return string.len(ARGV[1])"))
    await length(keys=[], args=[b"loaded"])
    held = HeldExchanges(monkeypatch)
    held.released.set()
    large = b"x" * (ALONE_BYTES + 1)
    answers = await asyncio.gather(*(length(keys=[], args=[arg]) for arg in (b"ab", large, b"abc")))
    assert answers == [2, len(large), 3]
    assert held.sizes == [2]  # the large one, a plain call, beside the exchange of the two small ones


async def test_a_broken_connection_fails_every_call_of_the_batch_and_counts_once(server: RedisServer) -> None:
    redis, close = connect(server.url, "standalone", timeout=2.0, max_connections=CONNECTIONS)
    assert isinstance(redis, Redis)
    breaker = CircuitBreaker(threshold=3, cooldown=60.0)
    store = CircuitBreakingStore(RedisStore(redis, KeyScheme("batching:"), close=close), breaker)
    try:
        await store.get(AnnotationKey(1, Variant.PLAIN))  # connected, the script loaded
        server.stop()
        keys = [AnnotationKey(n, Variant.PLAIN) for n in range(2, 6)]
        answers = await asyncio.gather(*(store.get(key) for key in keys), return_exceptions=True)
        assert all(isinstance(answer, CacheError) for answer in answers), answers
        assert breaker.state is State.CLOSED  # one connection failed: one failure, where three open the circuit
        for _ in range(2):
            with pytest.raises(CacheError):
                await store.get(AnnotationKey(1, Variant.PLAIN))
        assert breaker.state is State.OPEN
    finally:
        await store.close()


async def test_a_failed_batch_counts_on_a_call_still_awaited_when_its_first_caller_left(
    client: Redis, server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, calls = await three_on_the_wire(client, monkeypatch)
    calls[0].cancel()  # its caller went away while the batch was on the wire
    server.stop()
    held.released.set()
    answers = await asyncio.gather(*calls[1:], return_exceptions=True)
    assert isinstance(answers[0], RedisConnectionError)  # the one failure the circuit breaker counts
    assert isinstance(answers[1], SharedFailure)


async def test_answers_redis_gave_stand_when_the_connection_fails_while_the_script_is_loaded_again(
    client: Redis, server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script flushed between two calls of one exchange (by a failover, say), then the connection lost while
    the second is made again: the first keeps its answer."""
    echo = batched(client, client.register_script(ECHO))
    await echo(keys=["loaded"], args=["alone"])
    exchange = BatchedScript._exchange

    async def flushed_midway(script: BatchedScript, calls: list[Any]) -> list[Any]:
        answers = await exchange(script, calls)
        answers[1] = NoScriptError("No matching script.")  # what Redis answers once the script is gone
        server.stop()
        return answers

    monkeypatch.setattr(BatchedScript, "_exchange", flushed_midway)
    answers = await asyncio.gather(*(echo(keys=["calls"], args=[f"call{n}"]) for n in range(2)), return_exceptions=True)
    assert answers[0] == b"call0:1"  # Redis ran it: a claim it granted is not lost
    assert isinstance(answers[1], RedisConnectionError)


async def test_calls_waiting_for_room_give_up_after_the_pools_wait_when_redis_hangs() -> None:
    """A Redis that accepts connections and never answers: the call on the wire times out, and the calls waiting
    behind it fail as commands waiting for a pooled connection do, none of them sent after it."""
    accepted: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # never answers

    silent = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    redis, close = connect(f"redis://127.0.0.1:{port}/0", "standalone", timeout=0.2, max_connections=1)
    assert isinstance(redis, Redis)
    try:
        echo = batched(redis, redis.register_script(ECHO))
        async with asyncio.timeout(10):  # a guard against hanging, not a measurement
            answers = await asyncio.gather(
                *(echo(keys=["calls"], args=[str(n)]) for n in range(4)), return_exceptions=True
            )
        assert isinstance(answers[0], RedisError)  # the call on the wire: its read timed out
        assert [str(answer) for answer in answers[1:]] == ["No connection available."] * 3
        assert len(accepted) == 1  # nothing was sent after the call that hung
    finally:
        await close()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


class PacedRedis:
    """A stand-in for Redis on a real socket, for answers at a pace and in an order a real server cannot be made to
    keep: on each connection, each EVALSHA is answered with its first argument (ARGV[1]), or for the first
    ``noscript`` of them a NOSCRIPT error, the first at once and each next one ``gap`` seconds after the one before,
    until ``answers`` have gone; then the connection is closed. Anything else (the client's greeting) is answered
    OK, or PONG. Past ``connections`` connections, each new one is closed at once."""

    def __init__(
        self, *, gap: float = 0.0, answers: int | None = None, noscript: int = 0, connections: int | None = None
    ) -> None:
        self.gap = gap
        self.answers = answers
        self.noscript = noscript
        self.connections = connections
        self.stopped = asyncio.Event()  # set at the end of the test: a pause ends, and the connection with it
        self.served: list[asyncio.Task[Any]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.served.append(asyncio.current_task())  # type: ignore[arg-type]  # a handler runs in a task
        if self.connections is not None and len(self.served) > self.connections:
            writer.close()
            return
        answered = 0
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while not self.stopped.is_set() and (self.answers is None or answered < self.answers):
                words = await self._command(reader)
                if words is None:
                    break
                if words[0].upper() != b"EVALSHA":
                    writer.write(b"+PONG\r\n" if words[0].upper() == b"PING" else b"+OK\r\n")
                    continue
                if answered:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopped.wait(), self.gap)
                argv = words[3 + int(words[2]) :]
                if answered < self.noscript:
                    writer.write(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
                else:
                    writer.write(b"$%d\r\n%b\r\n" % (len(argv[0]), argv[0]))
                await writer.drain()
                answered += 1
        writer.close()

    @staticmethod
    async def _command(reader: asyncio.StreamReader) -> list[bytes] | None:
        header = await reader.readline()
        if not header:
            return None
        words = []
        for _ in range(int(header[1:])):
            length = int((await reader.readline())[1:])
            words.append((await reader.readexactly(length + 2))[:-2])
        return words


@contextlib.asynccontextmanager
async def paced_redis(stand_in: PacedRedis) -> AsyncIterator[Redis]:
    """A client of ``stand_in``, served on a free port, with a socket timeout of half a second."""
    server = await asyncio.start_server(stand_in.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis, close = connect(f"redis://127.0.0.1:{port}/0", "standalone", timeout=0.5, max_connections=CONNECTIONS)
    assert isinstance(redis, Redis)
    try:
        yield redis
    finally:
        await close()
        stand_in.stopped.set()
        await asyncio.gather(*stand_in.served)
        server.close()
        await server.wait_closed()


async def made_together(call: ScriptCall, count: int) -> list[Any]:
    """``count`` calls of ``call`` made in one turn of the loop, with ARGV[1] ``call0``, ``call1``...: each one's
    answer or failure."""
    async with asyncio.timeout(10):  # a guard against hanging, not a measurement
        return await asyncio.gather(*(call(keys=[], args=[f"call{n}"]) for n in range(count)), return_exceptions=True)


async def test_a_batchs_answers_come_within_one_timeout_of_its_write_as_each_calls_alone_would() -> None:
    """Redis answering each call of a batch within the timeout of the one before, but not of the write: the calls it
    has not answered when the timeout is up fail, as each alone would have (far past PROXY_REDIS_TIMEOUT, the last
    would otherwise wait for all the others), and those it answered keep their answers."""
    async with paced_redis(PacedRedis(gap=0.3)) as redis:  # answers at 0, 0.3, 0.6 and 0.9 s; the timeout 0.5 s
        answer = batched(redis, redis.register_script(ANSWER))
        answers = await made_together(answer, 4)
        async with asyncio.timeout(10):  # a guard against hanging, not a measurement
            assert await answer(keys=[], args=["next"]) == b"next"  # the connection went: no answer left unread
    assert answers[:2] == [b"call0", b"call1"]
    assert isinstance(answers[2], RedisTimeoutError)  # the one failure the circuit breaker counts
    assert isinstance(answers[3], SharedFailure)


async def test_calls_redis_answered_before_the_connection_broke_keep_their_answers() -> None:
    async with paced_redis(PacedRedis(answers=1)) as redis:  # one answer, then the connection closed
        answer = batched(redis, redis.register_script(ANSWER))
        answers = await made_together(answer, 3)
    assert answers[0] == b"call0"  # Redis ran it: a claim it granted is not lost
    assert isinstance(answers[1], RedisConnectionError)
    assert isinstance(answers[2], SharedFailure)


async def test_a_call_that_found_no_script_in_a_batch_whose_connection_then_broke_shares_its_one_failure() -> None:
    """Not made again (SCRIPT LOAD, then the call) on a Redis that has just failed: the batch counts once toward
    the circuit breaker, as a batch whose connection fails does."""
    stand_in = PacedRedis(noscript=1, answers=1, connections=1)  # NOSCRIPT, then closed; and no other connection
    async with paced_redis(stand_in) as redis:
        answer = batched(redis, redis.register_script(ANSWER))
        answers = await made_together(answer, 3)
    assert isinstance(answers[0], SharedFailure)
    assert isinstance(answers[1], RedisConnectionError)  # the one failure the circuit breaker counts
    assert isinstance(answers[2], SharedFailure)


async def test_a_batch_cancelled_before_it_starts_leaves_later_calls_their_answers(client: Redis) -> None:
    echo = batched(client, client.register_script(ECHO))
    waiting = echo(keys=["calls"], args=["waiting"])
    (batch,) = [task for task in asyncio.all_tasks() if task.get_name() == "redis-batch"]
    batch.cancel()  # as the loop's shutdown sweep cancels what is pending
    await turns()
    assert isinstance(waiting, asyncio.Future)
    assert waiting.cancelled()  # its call goes with its batch, instead of waiting for one that never starts
    async with asyncio.timeout(10):  # a guard against hanging, not a measurement
        assert await echo(keys=["calls"], args=["later"]) == b"later:1"


async def test_calls_on_the_wire_when_the_client_closes_fail_instead_of_waiting(server: RedisServer) -> None:
    redis, close = connect(server.url, "standalone", timeout=2.0, max_connections=CONNECTIONS)
    assert isinstance(redis, Redis)
    echo = batched(redis, redis.register_script(ECHO))
    await echo(keys=["calls"], args=["first"])
    calls = [echo(keys=["calls"], args=[f"call{n}"]) for n in range(4)]
    await asyncio.sleep(0)  # the batch starts and sends them
    await close()  # as the store closes at shutdown
    async with asyncio.timeout(10):  # a guard against hanging, not a measurement
        answers = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(answers[0], RedisConnectionError)
    assert all(isinstance(answer, SharedFailure) for answer in answers[1:]), answers


async def test_a_cluster_client_s_calls_are_not_batched(redis_cluster: str) -> None:
    cluster, close = connect(redis_cluster, "cluster", timeout=2.0, max_connections=CONNECTIONS)
    try:
        script = cluster.register_script(ECHO)
        assert batched(cluster, script) is script  # its pipelines split by slot and node: plain calls
    finally:
        await close()


def packed(keys: Sequence[str], args: Sequence[Any], connection: Connection | None = None) -> list[bytes]:
    """What a batch writes for one call, chunk by chunk."""
    chunks: list[bytes] = []
    call = _Call(keys, args, asyncio.get_running_loop().create_future(), 0.0)
    _evalsha(chunks, SHA, call, (connection or Connection()).encoder)
    return chunks


@pytest.mark.parametrize(
    ("keys", "args"),
    [
        (["annotation:1"], ["a", 7, b"\x00\xffbytes", ""]),
        (["clé", "キー"], ["ünïcödé", -12, 0, 2**62]),
        ([], [b"x" * 10_000, "y" * 7_000, "small"]),
        (["k"], [1.5, bytearray(b"ba"), memoryview(b"mv")]),  # none the store sends: as redis-py takes them
    ],
)
async def test_an_exchange_writes_what_redis_pys_packer_writes(keys: list[str], args: list[Any]) -> None:
    for connection in (Connection(), Connection(encoding="latin-1", encoding_errors="replace")):
        expected = b"".join(connection.pack_command("EVALSHA", SHA, len(keys), *keys, *args))
        assert b"".join(packed(keys, args, connection)) == expected


async def test_an_exchange_refuses_what_redis_py_refuses() -> None:
    with pytest.raises(DataError):
        packed(["k"], [True])  # a bool is an int to Python, and no number to redis-py


async def test_an_entrys_body_is_written_from_its_own_bytes_not_copied() -> None:
    body = b"{" + b"x" * 100_000 + b"}"
    chunks = packed(["annotation:1"], ["a", body, 3])
    assert any(chunk is body for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks if chunk is not body) < 1_000  # no copy of it beside


async def test_a_call_that_finds_the_script_gone_loads_it_and_is_made_once_more(
    client: Redis, server: RedisServer
) -> None:
    echo = batched(client, client.register_script(ECHO))
    await echo(keys=["calls"], args=["first"])
    await client.script_flush()  # as after a restart without persistence or a failover
    with recorded_commands(server.url) as sent:
        assert await echo(keys=["calls"], args=["again"]) == b"again:2"
    assert sent == ["EVALSHA", "SCRIPT", "EVALSHA"]  # missed, loaded, made again: nothing more


async def test_text_beyond_ascii_reaches_the_script_as_redis_py_would_send_it(client: Redis) -> None:
    echo = batched(client, client.register_script(ECHO))
    answers = await asyncio.gather(*(echo(keys=["calls"], args=[word]) for word in ("ünï", "キー", 42)))
    assert sorted(answers) == sorted(f"{word}:{n}".encode() for n, word in enumerate(("ünï", "キー", "42"), 1))


async def test_a_batch_cancelled_while_on_the_wire_leaves_no_answer_for_the_next_call(server: RedisServer) -> None:
    """Its answer unread on the connection would be the next call's answer: the connection goes instead."""
    redis, close = connect(server.url, "standalone", timeout=2.0, max_connections=1)
    assert isinstance(redis, Redis)
    answer = batched(redis, redis.register_script(ANSWER))
    try:
        await answer(keys=[], args=["loaded"])
        server.process.send_signal(signal.SIGSTOP)  # Redis answers nothing until it goes on
        try:
            waiting = answer(keys=[], args=["cancelled"])
            await turns()  # written: the batch waits for its answer
            (batch,) = [task for task in asyncio.all_tasks() if task.get_name() == "redis-batch"]
            batch.cancel()
            await turns()
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert isinstance(waiting, asyncio.Future)
        assert waiting.cancelled()
        async with asyncio.timeout(10):  # a guard against hanging, not a measurement
            assert await answer(keys=[], args=["next"]) == b"next"
    finally:
        await close()

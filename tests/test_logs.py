"""proxy/logs.py: JSON lines, written in batches, and the access log's quick path."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from proxy import logs
from proxy.logs import ACCESS_LOG, MAX_PENDING, BatchedHandler, JsonFormatter, LineWriter, configure_logging
from tests.support.waiting import wait_until

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[CountingStream]:
    """configure_logging on a stream of the test's own; the root logger and the access log restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = CountingStream()
    configure_logging("INFO", stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)
    ACCESS_LOG.writer = None


FIELDS = [
    {"method": "GET", "route": "annotation", "path": "/api/annotations/1/", "status": 200, "cache": "hit"},
    {"method": "OTHER", "route": "unmatched", "path": '/a"b\\c/\u00e9\u2028\x7f', "status": 404, "cache": None},
]


@contextmanager
def handler_alone() -> Iterator[None]:
    """Only configure_logging's handler on the root logger: pytest adds its own for every phase of a test."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [h for h in saved if isinstance(h, BatchedHandler)]
    try:
        yield
    finally:
        root.handlers[:] = saved


def written_now() -> None:
    """What waits in configure_logging's writer, written at once (as its delay or exit would)."""
    assert ACCESS_LOG.writer is not None
    ACCESS_LOG.writer.flush()


def no_log_record(*args: object, **kwargs: object) -> None:
    raise AssertionError("the access log went through logging")


# A caller's request id, the edge's own (hex digits), letters beyond ASCII, and what no request id the edge passes is.
@pytest.mark.parametrize("request_id", ["r-1", "0123abcdef", "\u00e9t\u00e9", 'r"1', "r\\1", "r\t1"])
@pytest.mark.parametrize("fields", FIELDS, ids=["plain", "escapes"])
async def test_the_quick_access_line_is_what_the_formatter_writes(
    stream: CountingStream, fields: dict[str, object], request_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = {**fields, "duration_ms": 0.125, "request_id": request_id}
    monkeypatch.setattr(ACCESS_LOG.logger, "info", no_log_record)
    with handler_alone():
        ACCESS_LOG.record(**fields, seconds=0.000125, request_id=request_id)  # type: ignore[arg-type]
        written_now()
    [written] = stream.getvalue().split("\n")[:-1]  # not splitlines(): U+2028 is a line break to it, not to JSON

    record = logging.getLogger("proxy.access").makeRecord("proxy.access", logging.INFO, "", 0, "request", (), None)
    record.__dict__.update(line)
    expected = JsonFormatter().format(record)
    got, want = json.loads(written), json.loads(expected)
    assert TIMESTAMP.fullmatch(got.pop("ts"))
    want.pop("ts")
    assert list(got.items()) == list(want.items())  # same fields, same order, same values


async def test_lines_leave_together_within_the_delay_and_errors_at_once(stream: CountingStream) -> None:
    log = logging.getLogger("proxy.test")
    with handler_alone():
        for n in range(50):
            log.info("line", extra={"n": n})
        await asyncio.sleep(0)
        assert stream.writes == 0  # not per turn of the loop: they wait for the others of the next moments
        await wait_until(lambda: stream.writes > 0)  # FLUSH_SECONDS later
        assert stream.writes == 1
        assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == list(range(50))

        log.info("before")
        log.error("at once")
        assert stream.writes == 2  # the error took the pending line with it, in order
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()[-2:]] == ["before", "at once"]


async def test_a_full_batch_leaves_at_once(stream: CountingStream) -> None:
    with handler_alone():
        for _ in range(MAX_PENDING):
            ACCESS_LOG.record(**FIELDS[0], seconds=0.001, request_id="r-4")  # type: ignore[arg-type]
        assert stream.writes == 1  # no waiting: the lines that wait are bounded
        assert len(stream.getvalue().splitlines()) == MAX_PENDING


def test_without_a_running_loop_lines_are_written_at_once() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    writer.write("one\n")
    assert stream.getvalue() == "one\n"


def test_a_loop_closed_while_lines_waited_holds_no_line_back() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    loop = asyncio.new_event_loop()

    async def log_one() -> None:
        writer.write("in the loop\n")

    loop.run_until_complete(log_one())
    loop.close()  # before the writer's delay: its timer will never run
    writer.write("after it\n")  # no running loop: written at once, with the line that waited
    assert stream.getvalue() == "in the loop\nafter it\n"


def test_a_failing_stream_loses_lines_not_requests() -> None:
    stream = io.StringIO()
    stream.close()
    LineWriter(stream).write("lost\n")  # no exception


async def test_the_access_log_goes_through_logging_when_other_handlers_listen(
    stream: CountingStream, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        ACCESS_LOG.record(**FIELDS[0], seconds=0.001, request_id="r-2")
    [record] = [r for r in caplog.records if r.name == "proxy.access"]
    assert (record.getMessage(), record.request_id) == ("request", "r-2")  # type: ignore[attr-defined]


async def test_a_change_of_logging_reaches_the_access_lines_from_the_writers_next_batch(
    stream: CountingStream,
) -> None:
    root = logging.getLogger()
    with handler_alone():
        ACCESS_LOG.record(**FIELDS[0], seconds=0.001, request_id="r-5")  # type: ignore[arg-type]
        root.setLevel(logging.WARNING)
        ACCESS_LOG.record(**FIELDS[0], seconds=0.001, request_id="r-6")  # type: ignore[arg-type]  # same batch
        written_now()
        ACCESS_LOG.record(**FIELDS[0], seconds=0.001, request_id="r-7")  # type: ignore[arg-type]  # not logged
        written_now()
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["r-5", "r-6"]


async def test_a_new_writer_is_asked_about_before_its_first_access_line(
    stream: CountingStream, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick path found right for one writer's batch says nothing of another's, whatever their batch numbers."""
    with handler_alone():
        ACCESS_LOG.record(**FIELDS[0], seconds=0.001, request_id="r-8")  # type: ignore[arg-type]  # the quick path
    configure_logging("INFO", CountingStream())  # a new writer, at its first batch, beside caplog's handler
    monkeypatch.setattr(ACCESS_LOG.logger, "handlers", [caplog.handler])  # not alone: through logging
    ACCESS_LOG.record(**FIELDS[0], seconds=0.001, request_id="r-9")  # type: ignore[arg-type]
    written_now()
    assert [r.request_id for r in caplog.records if r.name == "proxy.access"] == ["r-9"]  # type: ignore[attr-defined]


async def test_the_quick_line_stamps_each_line_as_the_formatter_would(
    stream: CountingStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instants a hair below a millisecond (which the formatter rounds up), then later in that millisecond:
    each line's timestamp is the formatter's for its own instant, not the one kept from the line before."""
    start = 1_795_868_883.0
    instants = [start + 0.0279999, start + 0.0284002, start + 0.9999996, start + 1.0000004, start + 1.0009995]
    clock = iter(instants)
    monkeypatch.setattr(logs, "time", SimpleNamespace(time=lambda: next(clock)))
    with handler_alone():
        for _ in instants:
            ACCESS_LOG.record(**FIELDS[0], seconds=0.001, request_id="r-3")
        written_now()
    got = [json.loads(line)["ts"] for line in stream.getvalue().splitlines()]
    formatter = JsonFormatter()
    want = []
    for instant in instants:
        record = logging.makeLogRecord({"name": "proxy.access", "msg": "request", "created": instant})
        want.append(json.loads(formatter.format(record))["ts"])
    assert got == want

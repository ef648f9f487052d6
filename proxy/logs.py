"""Structured logging: one JSON object per line on stderr, with whatever ``extra=`` fields a call passes.

Lines leave in batches (:class:`LineWriter`): one system call for everything logged within
:data:`FLUSH_SECONDS`, warnings and errors at once. The access log, one line per request, skips the ``LogRecord``
machinery once :func:`configure_logging` is in charge (see :class:`AccessLog`).
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

# The longest a line waits to be written, as nginx's access_log flush= (a process killed outright loses no more),
# and the most lines that wait: a batch is written at once when it is full.
FLUSH_SECONDS = 0.05
MAX_PENDING = 512
STAMP_MARGIN_US = 0.01  # an instant this close to a millisecond's edge has its timestamp worked out anew
MAX_FRAGMENTS = 4096  # kinds of access line whose fixed text is kept (proxy/edge.py passes a few dozen)
# Batch numbers, for every writer from one count: a number names one batch of one writer (AccessLog asks about each).
_BATCHES = itertools.count()
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class LineWriter:
    """Writes lines to a stream in batches instead of one system call per line.

    A line waits at most :data:`FLUSH_SECONDS` (or until :data:`MAX_PENDING` lines wait) and leaves with every line
    logged meanwhile: under load, hundreds of requests' lines in one write, where a write per turn of the event loop
    was a fifteenth of a system call per request at 32 connections, 4% of a cache hit (docs/performance-log.md). When
    asked (``urgent``: warnings and errors) or with no running loop (start-up, shutdown, a loop closed while lines
    waited), the pending lines are written at once, in order; :func:`configure_logging` writes what is left at exit.
    A stream that fails (a closed pipe) loses the lines rather than the request. A line may also be left to format
    when the lines are written (:meth:`defer`): formatting many lines in one go costs less than one at a time
    between requests. A deferred line waits as its fields alone, all formatted by :attr:`render_deferred`: what a
    line keeps alive until the write costs a hit more than its allocation does (kept as a pair of its formatter and
    its fields, a hit took about 2% more CPU: docs/performance-log.md, the twenty-first round).
    """

    def __init__(self, stream: TextIO, *, delay: float = FLUSH_SECONDS) -> None:
        self._stream = stream
        self._delay = delay
        self._pending: list[str | tuple[Any, ...]] = []  # lines, and deferred lines' fields
        self.render_deferred: Callable[[tuple[Any, ...]], str] = _unset  # what formats the deferred lines
        self._timer: asyncio.TimerHandle | None = None  # the flush to come, while lines wait
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # its loop: one closed since will never run it
        self.batch = next(_BATCHES)  # a new one at every flush: the lines deferred from then on are another batch

    def write(self, line: str, *, urgent: bool = False) -> None:
        self._pending.append(line)
        if urgent or len(self._pending) >= MAX_PENDING:
            self.flush()
        elif self._timer_loop is None or self._timer_loop.is_closed():
            self._schedule()

    def defer(self, fields: tuple[Any, ...]) -> None:
        """A line that :attr:`render_deferred` formats from ``fields`` when it is written, in its place among the
        others."""
        self._pending.append(fields)
        if len(self._pending) >= MAX_PENDING:
            self.flush()
        elif self._timer_loop is None or self._timer_loop.is_closed():
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer, self._timer_loop = loop.call_later(self._delay, self.flush), loop

    def flush(self) -> None:
        self.batch = next(_BATCHES)
        if self._timer is not None:
            self._timer.cancel()  # the timer's own call, an earlier flush, or a closed loop's: no other is due
            self._timer = self._timer_loop = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        render = self.render_deferred
        data = "".join(item if isinstance(item, str) else render(item) for item in pending)
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            pass


def _unset(fields: tuple[Any, ...]) -> str:
    raise RuntimeError("LineWriter.defer called before render_deferred was set")


class BatchedHandler(logging.Handler):
    """A handler that formats with :class:`JsonFormatter` and writes through a :class:`LineWriter`."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record) + "\n", urgent=record.levelno >= logging.WARNING)
        except Exception:  # noqa: BLE001 - logging's own contract: a failing handler reports, never raises
            self.handleError(record)


def _string(value: str) -> str:
    """``json.dumps(value, ensure_ascii=False)``, quicker for the plain strings of an access log line."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value, ensure_ascii=False)


class AccessLog:
    """The access log: one line per request, on the ``proxy.access`` logger at INFO.

    While :func:`configure_logging`'s handler is the only one, the line is formatted here, without a
    ``LogRecord``, as the same JSON object as :class:`JsonFormatter` would write (``duration_ms`` with its three
    decimals written out: ``0.120`` where ``json.dumps`` writes ``0.12``): a record and the generic formatter cost
    about 14 µs a line, as much as aiohttp's own work for a cache hit. The request only records its fields; the
    line is formatted when the batch is written, from fragments that repeat from line to line (the
    timestamp by the millisecond; method, route, status and cache together, of which there are few) made once.
    Otherwise (tests, other handlers) the line goes through ``logging`` like every other.

    Whether the quick path applies (the logger enabled for INFO, :func:`configure_logging`'s handler alone) is
    asked once per batch of its writer, not per line: asked per line, it reads logging's own objects on every
    request, which cost a hit 3% on a real socket (docs/performance-log.md). So a change to logging's configuration
    reaches the access lines from the writer's next batch, within :data:`FLUSH_SECONDS`.
    """

    logger = logging.getLogger("proxy.access")

    def __init__(self) -> None:
        self.writer: LineWriter | None = None
        self._quick_batch = -1  # the batch (of whichever writer) in which the quick path was found to apply
        self._second = -1
        self._prefix = ""  # the timestamp to the second
        self._since = self._until = 0.0  # the instants _stamp is the timestamp of
        self._stamp = ""
        self._fragments: dict[tuple[str, str, int, str | None], tuple[str, str]] = {}

    def record(  # noqa: PLR0917 - its fields in order: the hot path's call (see the docstring)
        self, method: str, route: str, path: str, status: int, cache: str | None, seconds: float, request_id: str
    ) -> None:
        """One request's line; ``seconds``: how long it took (logged as ``duration_ms``). A plain method taking its
        fields in order, as the edge passes them: keywords, or a call through ``__call__``, cost a hit 1-2% more
        on a real socket (docs/performance-log.md)."""
        writer = self.writer
        if writer is None or writer.batch != self._quick_batch:
            if not self.logger.isEnabledFor(logging.INFO):
                return
            if writer is None or not self._writer_is_alone():
                fields = {"method": method, "route": route, "path": path, "status": status, "cache": cache}
                extra = fields | {"duration_ms": round(seconds * 1000, 3), "request_id": request_id}
                self.logger.info("request", extra=extra)
                return
            self._quick_batch = writer.batch
            writer.render_deferred = self._line
        writer.defer((time.time(), method, route, path, status, cache, seconds, request_id))

    def _line(self, fields: tuple[Any, ...]) -> str:
        now, method, route, path, status, cache, seconds, request_id = fields
        fragments = self._fragments.get((method, route, status, cache))
        if fragments is None:
            fragments = self._fragments_of(method, route, status, cache)
        before_path, after_path = fragments
        # An id of letters and digits (the edge's own, hex) is JSON as it is; any other goes through _string.
        quoted_id = f'"{request_id}"' if request_id.isalnum() else _string(request_id)
        return (
            f'{{"ts": "{self._ts(now)}", {before_path}{_string(path)}{after_path}'
            f'{seconds * 1000:.3f}, "request_id": {quoted_id}}}\n'
        )

    def _fragments_of(self, method: str, route: str, status: int, cache: str | None) -> tuple[str, str]:
        """The line's text around the path for these fields, kept while there are few kinds (the edge passes
        known methods, route names, status codes and cache results; anything past that is not kept)."""
        fragments = (
            f'"level": "info", "logger": "proxy.access", "msg": "request", '
            f'"method": {_string(method)}, "route": {_string(route)}, "path": ',
            f', "status": {status}, "cache": {"null" if cache is None else _string(cache)}, "duration_ms": ',
        )
        if len(self._fragments) < MAX_FRAGMENTS:
            self._fragments[(method, route, status, cache)] = fragments
        return fragments

    def _ts(self, now: float) -> str:
        """JsonFormatter's timestamp, formatted once per millisecond (its seconds part once per second). As in
        ``datetime.fromtimestamp``, the fraction of a second is rounded to the microsecond, then cut to the
        millisecond."""
        if self._since <= now < self._until:
            return self._stamp
        second = int(now)
        # A fraction that rounds up to a whole second makes the next second's first millisecond, as in datetime.
        millis = second * 1000 + round((now - second) * 1_000_000) // 1000
        second, within = divmod(millis, 1000)
        if second != self._second:
            self._second = second
            self._prefix = _timestamp(second)[:-10]  # "YYYY-MM-DDTHH:MM:SS"
        self._stamp = f"{self._prefix}.{within:03d}+00:00"
        # The instants that round into this millisecond, less a hair each side, which float rounding could blur.
        self._since = second + (within * 1000 - 0.5 + STAMP_MARGIN_US) / 1_000_000
        self._until = second + (within * 1000 + 999.5 - STAMP_MARGIN_US) / 1_000_000
        return self._stamp

    def _writer_is_alone(self) -> bool:
        handlers = logging.root.handlers
        return (
            len(handlers) == 1
            and isinstance(handlers[0], BatchedHandler)
            and handlers[0].writer is self.writer
            and not self.logger.handlers
            and self.logger.propagate
        )


ACCESS_LOG = AccessLog()


def configure_logging(level: str, stream: TextIO | None = None) -> LineWriter:
    """JSON lines on ``stream`` (stderr) for every logger; returns the writer, flushed at exit."""
    writer = LineWriter(stream if stream is not None else sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [BatchedHandler(writer)]
    root.setLevel(level)
    ACCESS_LOG.writer = writer
    atexit.register(writer.flush)
    return writer


class _ParserErrorRedaction(logging.Filter):
    """aiohttp's parser errors quote the offending request line or header (an ``Authorization`` line carries a
    client key), and aiohttp.server logs them at ERROR with the exception. Keep the fact and the error's type;
    drop its text. A malformed request is the caller's fault, so WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "malformed HTTP request: answered 400", None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.error = type(exc).__name__
        return True


def redact_aiohttp_parser_errors() -> None:
    """Install the redaction on aiohttp.server (idempotent: create_app calls this for every app; the 400 body
    aiohttp answers such a request with is proxy/http_guard.py's)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ParserErrorRedaction) for f in logger.filters):
        logger.addFilter(_ParserErrorRedaction())

"""Structured logging: one JSON object per line on stderr, with whatever ``extra=`` fields a call passes."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from aiohttp.http_exceptions import HttpProcessingError

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
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


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


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
    """Install the redaction on aiohttp.server (idempotent: create_app calls it for every app)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ParserErrorRedaction) for f in logger.filters):
        logger.addFilter(_ParserErrorRedaction())

"""A live ``created_ago``: Label Studio's wording of an annotation's age, and its place in a cached body.

Label Studio computes ``created_ago`` per response with Django's ``timesince(created_at)``, so a cached body's copy
goes stale. The proxy keeps the upstream bytes as they came, remembers where ``created_ago``'s JSON string sits in
them (:func:`find_created_ago`, once per fetch) and splices a fresh one in at serve time (:func:`with_created_ago`),
without re-serializing anything else. Pure functions, standard library only: Django is an oracle for the tests, not
a dependency.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

__all__ = ["created_ago_parts", "encode_created_ago", "find_created_ago", "timesince", "with_created_ago"]

# Django's TIME_STRINGS_KEYS and TIME_CHUNKS (django/utils/timesince.py): calendar years and months first, then
# fixed-size chunks.
_UNITS = ("year", "month", "week", "day", "hour", "minute")
_CHUNKS = (7 * 24 * 60 * 60, 24 * 60 * 60, 60 * 60, 60)  # week, day, hour, minute
# Django's MONTHS_DAYS: February is always 28 days here, leap year or not.
_MONTHS_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DEPTH = 2  # Label Studio's serializer calls timesince(created_at) with Django's default depth

_KEY = "created_ago"
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's insignificant whitespace, as json.decoder skips it
_DECODER = json.JSONDecoder()
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # one JSON string token, escapes and all
_QUOTED_KEY = '"created_ago"'


def timesince(then: datetime, now: datetime) -> str:
    """Django's ``django.utils.timesince.timesince(then, now)`` (depth 2, English), as ``created_ago`` renders it.

    Both datetimes must be timezone-aware. The algorithm is Django 5.2's, step for step:

    - whole seconds only: anything under a minute, ``now`` before ``then`` and the same instant give ``0 minutes``;
    - calendar years and months are counted up to a "pivot": ``then`` moved on by that many months, its day clamped
      to the month's length (February counts 28 days even in leap years) and its microseconds dropped;
    - what remains after the pivot is cut into weeks, days, hours and minutes;
    - at most two adjacent units are shown, starting at the largest non-zero one; a zero unit ends the list
      (``1 month`` rather than ``1 month, 0 weeks``; ``2 weeks`` even when hours remain);
    - U+00A0 (Django's ``avoid_wrapping``) between number and unit, ``", "`` between units.
    """
    now = now.astimezone(then.tzinfo)  # Django compares two aware datetimes in the first one's zone
    delta = now - then
    if delta.days * 24 * 60 * 60 + delta.seconds <= 0:  # microseconds ignored here...
        return _unit(0, "minute")

    total_months = (now.year - then.year) * 12 + (now.month - then.month)
    if then.day > now.day or (then.day == now.day and then.time() > now.time()):  # ...but not here
        total_months -= 1
    years, months = divmod(total_months, 12)

    pivot = then
    if years or months:
        pivot_year = then.year + years
        pivot_month = then.month + months
        if pivot_month > 12:
            pivot_month -= 12
            pivot_year += 1
        pivot = datetime(
            pivot_year,
            pivot_month,
            min(_MONTHS_DAYS[pivot_month - 1], then.day),
            then.hour,
            then.minute,
            then.second,
            tzinfo=then.tzinfo,
        )
    # Float arithmetic exactly as Django does it, so that even rounding agrees.
    remaining = (now - pivot).total_seconds()
    counts = [years, months]
    for chunk in _CHUNKS:
        count = int(remaining // chunk)
        counts.append(count)
        remaining -= chunk * count

    first = next((i for i, count in enumerate(counts) if count != 0), None)
    if first is None:
        return _unit(0, "minute")
    parts: list[str] = []
    for i in range(first, min(first + _DEPTH, len(_UNITS))):
        if counts[i] == 0:
            break
        parts.append(_unit(counts[i], _UNITS[i]))
    return ", ".join(parts)


def _unit(count: int, unit: str) -> str:
    """``"%(num)d minute"`` / ``"%(num)d minutes"`` through ``avoid_wrapping``: English plural, U+00A0 inside."""
    return f"{count}\u00a0{unit}{'' if count == 1 else 's'}"


def find_created_ago(body: bytes, *, parsed: bool = False, known: bool = False) -> tuple[int, int] | None:
    """The byte span ``[start, end)`` of the top-level ``created_ago`` JSON string in ``body``, quotes included.

    None when ``body`` is not a UTF-8 JSON object, or its top-level ``created_ago`` is missing or not a string.

    How: the body is decoded once, then only the top-level object is walked, token by token, with the json
    module's C scanner: ``JSONDecoder.raw_decode`` reads each key (a string token, escapes and all) and steps over
    each value whole, so a nested ``"created_ago"``, or that text inside a string, is consumed as part of a value
    and never seen as a key; only the braces, colons and commas between them, and JSON's whitespace, are read
    here. The string found gives a span in characters, converted to bytes by re-encoding the text before and inside
    it (nothing to do for an ASCII body, where the two agree). Walking to the end costs about one ``json.loads``
    (the values are built, then dropped) and checks the whole body; a duplicated key resolves like ``json.loads``,
    to the last one.

    ``parsed``: the caller has already parsed ``body`` as one JSON object (with pydantic, say), so its
    validity needs no second check, and :func:`_quick_span` decides Label Studio's bodies without the walk (about
    a tenth of its cost); what it cannot decide still gets the walk. ``known``: that parse also found a top-level
    ``created_ago`` string (proxy/models.py's ``Annotation`` requires one), so the key is written at the top level
    at least once, and :func:`_quick_span` need not check what precedes a key written only once.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        span = _quick_span(text, known=known) if parsed or known else _UNDECIDED
        if span is _UNDECIDED:
            span = _find_in_text(text)
    except (ValueError, IndexError, RecursionError):  # JSONDecodeError is a ValueError; IndexError: text ran out
        return None
    if span is None or len(text) == len(body):  # ASCII: characters are bytes
        return span
    start, end = span
    byte_start = len(text[:start].encode("utf-8"))
    return byte_start, byte_start + len(text[start:end].encode("utf-8"))


_UNDECIDED = (-1, -1)


def _quick_span(text: str, *, known: bool = False) -> tuple[int, int] | None:
    """The walk's answer for valid JSON ``text`` when one search settles it, else ``_UNDECIDED``.

    Settled: ``"created_ago"`` written once, without escapes anywhere in the body that could spell the key
    (``\\u``), at the top level of the object (what precedes it, strings taken out by a C regex, opens exactly one
    brace and balances its brackets: in valid JSON nothing else is at that depth) and followed by ``:``. When the
    top-level key is ``known`` to be there, a key written once (and spelled without escapes) can only be it, and
    what precedes it needs no look.
    """
    at = text.find(_QUOTED_KEY)
    if "\\u" in text:
        return _UNDECIDED  # a key may be spelled with escapes
    if at < 0:
        return None  # no key of that name anywhere
    if text.find(_QUOTED_KEY, at + 1) >= 0:
        return _UNDECIDED  # written twice: a nested one, a string, or a duplicate
    if not known:
        before = _STRING.sub("", text[:at])
        if '"' in before or before.count("{") - before.count("}") != 1 or before.count("[") != before.count("]"):
            return _UNDECIDED  # inside a string, or not at the top level
    pos = _skip(text, at + len(_QUOTED_KEY))
    if text[pos] != ":":
        return _UNDECIDED  # a string value, not a key
    start = _skip(text, pos + 1)
    value, end = _DECODER.raw_decode(text, start)
    return (start, end) if isinstance(value, str) else None


def _find_in_text(text: str) -> tuple[int, int] | None:
    """:func:`find_created_ago` on decoded text, in characters; raises ValueError or IndexError on invalid JSON."""
    span: tuple[int, int] | None = None
    pos = _skip(text, 0)
    if text[pos] != "{":
        return None
    pos = _skip(text, pos + 1)
    if text[pos] == "}":
        return _end(text, pos + 1, None)
    while True:
        if text[pos] != '"':
            raise ValueError("expected a key")
        key, pos = _DECODER.raw_decode(text, pos)  # a string token: the C scanner reads it whole
        pos = _skip(text, pos)
        if text[pos] != ":":
            raise ValueError("expected ':'")
        start = _skip(text, pos + 1)
        value, pos = _DECODER.raw_decode(text, start)  # the whole value, nested keys and all
        if key == _KEY:  # a later duplicate wins, as in json.loads
            span = (start, pos) if isinstance(value, str) else None
        pos = _skip(text, pos)
        if text[pos] == "}":
            return _end(text, pos + 1, span)
        if text[pos] != ",":
            raise ValueError("expected ',' or '}'")
        pos = _skip(text, pos + 1)


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return pos if match is None else match.end()


def _end(text: str, pos: int, span: tuple[int, int] | None) -> tuple[int, int] | None:
    """``span``, if only whitespace follows the object (else the body is not one JSON document)."""
    if _skip(text, pos) != len(text):
        raise ValueError("extra data after the object")
    return span


def encode_created_ago(value: str) -> bytes:
    """``value`` as a JSON string the way Label Studio (DRF's JSONRenderer) writes it: raw UTF-8, quotes included.

    Like DRF, U+2028 and U+2029 are the only non-ASCII characters escaped.
    """
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode("utf-8")


def with_created_ago(body: bytes, span: tuple[int, int] | None, value: str) -> bytes:
    """``body`` with the bytes in ``span`` (from :func:`find_created_ago`) replaced by ``value`` as a JSON string.

    Everything outside the span is kept byte for byte; ``body`` itself is returned when ``span`` is None.
    """
    if span is None:
        return body
    return b"".join(created_ago_parts(body, span, value))


def created_ago_parts(body: bytes, span: tuple[int, int], value: str) -> tuple[memoryview, bytes, memoryview]:
    """The parts :func:`with_created_ago` joins: views of ``body`` around ``value`` (nothing of ``body`` copied;
    large bodies are written part by part, proxy/render.py)."""
    start, end = span
    whole = memoryview(body)
    return whole[:start], encode_created_ago(value), whole[end:]

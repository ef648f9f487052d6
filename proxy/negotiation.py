"""Content negotiation: which ``Accept`` headers get an annotation (as Label Studio decides it), and whether a
response is gzipped (``Accept-Encoding``, RFC 9110 12.5.3). Pure functions of header values, memoized: callers
send a handful of distinct values, and the memo is bounded against the ones who send more: in entries here, in
bytes by the 431 past ``MAX_LIST_FIELD`` (:func:`proxy.http_guard.field_value`).
"""

from __future__ import annotations

import functools

GZIP = "gzip"


def _q(params: list[str]) -> float | None:
    """An item's quality value: 1 when absent, None when malformed (the item is then ignored)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            return q if 0.0 <= q <= 1.0 else None
    return 1.0


@functools.lru_cache(maxsize=256)
def wants_gzip(accept_encoding: str) -> bool:
    """Whether to gzip for this ``Accept-Encoding`` (the field's lines joined with commas).

    gzip (or its alias x-gzip, or ``*`` when neither is named) with a quality above 0, unless ``identity`` is
    named with a higher one. Everything else is sent as it is: identity is acceptable unless excluded, and a
    caller that excludes it and accepts nothing else still gets the plain body (the RFC's advice).
    """
    q_gzip: float | None = None
    q_any: float | None = None
    q_identity: float | None = None
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        q = _q(params)
        if q is None:
            continue
        if coding in ("gzip", "x-gzip"):
            q_gzip = q if q_gzip is None else max(q_gzip, q)
        elif coding == "*":
            q_any = q
        elif coding == "identity":
            q_identity = q
    if q_gzip is None:
        q_gzip = q_any
    if q_gzip is None or q_gzip <= 0:
        return False
    return q_identity is None or q_gzip >= q_identity


@functools.lru_cache(maxsize=256)
def accepts_json(accept: str) -> bool:
    """Whether Label Studio would answer this ``Accept`` (the field's lines joined with commas) with its JSON,
    rather than 406.

    Label Studio's API renders JSON only (Django REST framework's ``JSONRenderer``), and REST framework picks a
    renderer by matching each listed media range against ``application/json``: type and subtype each equal or
    ``*``, case-insensitive, parameters and quality values not looked at (so ``application/json;q=0`` is
    accepted). An empty value matches nothing; an absent header is ``*/*``.
    """
    for item in accept.split(","):
        media_range = item.split(";", 1)[0].strip().lower()
        main, _, sub = media_range.partition("/")
        if main in ("application", "*") and sub in ("json", "*"):
            return True
    return False

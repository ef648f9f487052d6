"""Reading the proxy's ``Cache-Status`` in tests: what happened, apart from the remaining freshness (``ttl=``),
which moves with the clock and is asserted where a test is about it."""

from __future__ import annotations

import re
from collections.abc import Mapping

TTL = re.compile(r"; ttl=(-?\d+)$")


def without_ttl(value: str) -> str:
    return TTL.sub("", value)


def status_of(headers: Mapping[str, str]) -> str:
    """The ``Cache-Status`` of a response without its ``ttl`` ("" when there is none)."""
    return without_ttl(headers.get("Cache-Status", ""))


def ttl_of(headers: Mapping[str, str]) -> int | None:
    """The ``ttl=`` of a response's ``Cache-Status``, if it has one."""
    match = TTL.search(headers.get("Cache-Status", ""))
    return None if match is None else int(match.group(1))

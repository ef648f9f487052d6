"""Memos of pure functions of request header values (content negotiation, Cache-Control): callers send a handful of
distinct values, each a few dozen characters, and a hit should not parse them again.

A header value may be a megabyte (aiohttp accepts 128 lines of 8 KiB, joined into one value), and some of these
functions run before the client key is checked. So only values up to :data:`MAX_KEPT` characters are kept, at most
``maxsize`` of them: a memo holds at most ``maxsize * MAX_KEPT`` characters, whatever callers send
(docs/memory.md). Longer values are worked out each time, which costs their sender, no one else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_KEPT = 256  # characters of header values one memo entry keeps (the arguments together)


class HeaderMemo(Generic[T]):
    """``function`` of header values, memoized for values of :data:`MAX_KEPT` characters or fewer."""

    __slots__ = ("_function", "_memo")

    def __init__(self, function: Callable[..., T], maxsize: int) -> None:
        self._function = function
        self._memo = functools.lru_cache(maxsize=maxsize)(function)

    def __call__(self, *values: str) -> T:
        if sum(map(len, values)) > MAX_KEPT:
            return self._function(*values)
        return self._memo(*values)

    def kept(self) -> int:
        """How many values the memo holds."""
        return self._memo.cache_info().currsize

    def clear(self) -> None:
        self._memo.cache_clear()


def header_memo(maxsize: int) -> Callable[[Callable[..., T]], HeaderMemo[T]]:
    """Decorate a pure function of header values (str arguments) with a :class:`HeaderMemo`."""
    return lambda function: HeaderMemo(function, maxsize)

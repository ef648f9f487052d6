"""A memo for what is read off a request's raw path: a service sees the same few paths again and again.

The front door (is it an annotation?), the annotation route (which id?) and the access log (the path as sent)
each read the request line's path, a few string operations and a regular expression per request: about a tenth
of a cache hit on a real socket (docs/performance-log.md). :class:`PathMemo` keeps a pure function's results per raw
path. Only paths of at most :data:`MAX_PATH_LENGTH` characters are kept, at most :data:`MAX_PATHS` of them (under
a megabyte), all forgotten at once when full: a caller sending ever new paths costs a recomputation, never
memory. A call that raises keeps nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_PATHS = 4096
MAX_PATH_LENGTH = 96  # "/api/annotations/<19 digits>/?expand=completed_by&format=json" is 68


class PathMemo(Generic[T]):
    """``function`` of a raw path, its results kept (a decorator)."""

    def __init__(self, function: Callable[[str], T]) -> None:
        self._function = function
        self._kept: dict[str, T] = {}
        self.__doc__ = function.__doc__

    def __call__(self, raw_path: str) -> T:
        try:
            return self._kept[raw_path]
        except KeyError:
            pass
        result = self._function(raw_path)
        if len(raw_path) <= MAX_PATH_LENGTH:
            if len(self._kept) >= MAX_PATHS:
                self._kept.clear()
            self._kept[raw_path] = result
        return result

    def __len__(self) -> int:
        return len(self._kept)

"""One byte-bounded map for everything in process that holds bodies: the in-process store, the hot tier and the
render memo (proxy/budget.py adds their bounds up).

Each value is counted with its size plus a per-entry overhead (the key, the record, the dict slot: what a value
costs beyond its bytes, measured with tracemalloc by each user). Putting a value past the bound drops the oldest
first: insertion order, or least recently used for a user that :meth:`ByteBoundedMap.touch`\\ es what it reads.
Not cachetools: its caches count sizes the same way but cannot grow a value in place (the store's task index
grows by an id at a time) and would add a dependency for fifty lines. Single event loop, no locks needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBoundedMap(Generic[K, V]):
    def __init__(self, max_bytes: int, *, overhead: int) -> None:
        self.max_bytes = max_bytes
        self.overhead = overhead
        self._values: OrderedDict[K, V] = OrderedDict()
        self._sizes: dict[K, int] = {}
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._values)

    def fits(self, size: int) -> bool:
        """Whether a value of ``size`` bytes can be kept at all."""
        return size + self.overhead <= self.max_bytes

    def small(self, size: int) -> bool:
        """Whether a value of ``size`` bytes takes at most a quarter of the bound: the most a memo keeps of one
        value, so that one value cannot push every other out."""
        return size + self.overhead <= self.max_bytes // 4

    def get(self, key: K) -> V | None:
        return self._values.get(key)

    def touch(self, key: K) -> None:
        """``key`` was just used: it goes out last."""
        self._values.move_to_end(key)

    def put(self, key: K, value: V, size: int) -> bool:
        """Keep ``value`` (``size`` bytes) as the newest, dropping the oldest until it fits; False, keeping
        nothing, when it cannot fit at all."""
        self.pop(key)
        if not self.fits(size):
            return False
        self._values[key] = value
        self._sizes[key] = size + self.overhead
        self._bytes += size + self.overhead
        self._shrink()
        return True

    def grow(self, key: K, by: int) -> None:
        """The value of ``key`` grew in place by ``by`` bytes."""
        self._sizes[key] += by
        self._bytes += by
        self._shrink()

    def pop(self, key: K) -> V | None:
        value = self._values.pop(key, None)
        if value is not None:
            self._bytes -= self._sizes.pop(key)
        return value

    def clear(self) -> None:
        self._values.clear()
        self._sizes.clear()
        self._bytes = 0

    def _shrink(self) -> None:
        while self._bytes > self.max_bytes:
            oldest, _ = self._values.popitem(last=False)
            self._bytes -= self._sizes.pop(oldest)

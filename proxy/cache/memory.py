"""An in-process store for running without Redis: one process, bounded in bytes, least recently used first out.

It keeps the same three kinds of record as the Redis store (pointer, version, 404 marker), each with its own
expiry, so both adapters pass one contract test class. All methods run without awaiting, so on one event loop
every operation is atomic, as the Redis scripts are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass

from proxy.cache.base import AnnotationKey, CachedAnnotation, Lookup, Missing, Superseded, Variant
from proxy.cache.bounded import ByteBoundedMap
from proxy.cache.keyspace import FENCE

# Per-record overhead (dict slot, tuple key, record, the entry object), so the byte bound holds for small bodies
# and tombstones too.
RECORD_OVERHEAD = 350  # measured with tracemalloc: about 1,000 bytes for the three records of a version
TASK_MEMBER_SIZE = 16  # an annotation id in a task's index


@dataclass(slots=True)
class _Record:
    expires_at: float
    value: object


class MemoryStore:
    name = "memory"

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        # Least recently used out first: every read touches what it finds.
        self._records: ByteBoundedMap[Hashable, _Record] = ByteBoundedMap(max_bytes, overhead=RECORD_OVERHEAD)

    @property
    def size_bytes(self) -> int:
        return self._records.size_bytes

    async def get(self, key: AnnotationKey) -> Lookup:
        annotation_id, variant = key
        since = self._live(("missing", annotation_id))
        if isinstance(since, int):
            return Missing(since)
        version = self._live(("latest", annotation_id))
        if version is None:
            return None
        entry = self._live(("v", annotation_id, version, variant))
        return entry if isinstance(entry, CachedAnnotation) else None

    async def get_or_claim(self, key: AnnotationKey, ttl: float) -> tuple[Lookup, bool]:
        found = await self.get(key)
        return found, found is None  # claims are always granted here (see claim)

    async def put(self, key: AnnotationKey, entry: CachedAnnotation, ttl: float, *, release: bool = False) -> bool:
        annotation_id, variant = key
        if entry.task is not None and self._live(("task_deleted", entry.task)) is not None:
            await self.put_missing(annotation_id, ttl, since=FENCE)  # fetched before the task's deletion
            return False
        current = self._live(("latest", annotation_id))
        if isinstance(current, int) and current > entry.version:
            return False
        missing_since = self._live(("missing", annotation_id))
        if isinstance(missing_since, int) and missing_since > round(entry.stored_at * 1_000_000):
            return False
        if not self._records.fits(len(entry.body) + RECORD_OVERHEAD):  # the version and its pointer
            return False
        self._set(("v", annotation_id, entry.version, variant), entry, len(entry.body), ttl)
        self._set(("latest", annotation_id), entry.version, 0, ttl)
        self._delete(("missing", annotation_id))
        if entry.task is not None:
            self._index(entry.task, annotation_id, ttl)
        return True

    async def put_missing(self, annotation_id: int, ttl: float, *, since: int, release: Variant | None = None) -> bool:
        current = self._live(("latest", annotation_id))
        if isinstance(current, int) and current > since:
            return False
        self._delete(("latest", annotation_id))
        if ttl > 0:
            self._set(("missing", annotation_id), since, 0, ttl)
        return True

    async def invalidate(self, annotation_id: int, version: int, ttl: float) -> str:
        """Nothing to announce: one process, whose reload supersedes its loads in flight (proxy/loads.py)."""
        if self._live(("missing", annotation_id)) == FENCE:  # a deletion stands (AnnotationStore.invalidate)
            return ""
        current = self._live(("latest", annotation_id))
        if isinstance(current, int) and current > version:
            return ""
        if current == version:
            for variant in Variant:
                self._delete(("v", annotation_id, version, variant))
        self._set(("latest", annotation_id), version, 0, ttl)
        self._delete(("missing", annotation_id))
        return ""

    async def drop(self, annotation_id: int) -> None:
        self._delete(("latest", annotation_id))
        self._delete(("missing", annotation_id))

    async def task_deleted(self, task_id: int, ttl: float) -> set[int]:
        self._set(("task_deleted", task_id), True, 0, ttl)
        members = self._live(("task", task_id))
        self._delete(("task", task_id))
        return set(members) if isinstance(members, set) else set()

    async def ping(self) -> None:
        return None

    async def claim(self, key: AnnotationKey, ttl: float) -> bool:
        return True  # one process: its own coalescing is enough

    async def release(self, key: AnnotationKey) -> None:
        return None

    async def reconnect(self) -> None:
        return None  # no connections

    async def changes(self) -> AsyncIterator[int | Superseded | None]:
        """Nothing to hear: one process writes this store, and its own writes reach its hot tier directly."""
        yield None
        await asyncio.Event().wait()

    async def close(self) -> None:
        self._records.clear()

    # Internals

    def _live(self, key: Hashable) -> object | None:
        record = self._records.get(key)
        if record is None:
            return None
        if record.expires_at <= self._clock():
            self._delete(key)
            return None
        self._records.touch(key)
        return record.value

    def _set(self, key: Hashable, value: object, size: int, ttl: float) -> None:
        """Keep ``value`` (``size`` bytes beyond the record's overhead) for ``ttl`` seconds."""
        self._records.put(key, _Record(self._clock() + ttl, value), size)

    def _index(self, task_id: int, annotation_id: int, ttl: float) -> None:
        """Add the annotation to its task's index, in place: a task may have thousands of annotations."""
        key = ("task", task_id)
        members = self._live(key)
        if not isinstance(members, set):
            self._set(key, {annotation_id}, TASK_MEMBER_SIZE, ttl)
            return
        record = self._records.get(key)
        assert record is not None  # noqa: S101 - _live found it just now
        record.expires_at = max(record.expires_at, self._clock() + ttl)
        if annotation_id not in members:
            members.add(annotation_id)
            self._records.grow(key, TASK_MEMBER_SIZE)

    def _delete(self, key: Hashable) -> None:
        self._records.pop(key)

"""What the service needs from a cache, and the value it stores.

A cached entry is one *version* of one annotation: its id, its ``updated_at`` (as integer microseconds, the
version), the expand variant, and Label Studio's body bytes. For each id the store also keeps a *pointer* to the
newest version it has seen; a read follows the pointer, so once a newer version is known an older one is never
served again, and a write of an older version than the pointer's is refused. The two adapters
(:mod:`proxy.cache.redis_store`, :mod:`proxy.cache.memory`) pass the same contract tests.
"""

from __future__ import annotations

import enum
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from proxy.errors import CacheError


class Variant(enum.StrEnum):
    """Label Studio renders two different bodies for the same annotation."""

    PLAIN = "plain"
    EXPANDED = "expand"  # ?expand=completed_by


class AnnotationKey(NamedTuple):
    annotation_id: int
    variant: Variant


@dataclass(frozen=True, slots=True)
class Missing:
    """The store remembers that Label Studio answered 404 for this id (negative caching)."""

    # When the fetch that saw the 404 began (microseconds since the epoch), as ``put_missing`` was told: what the
    # answer's Age is counted from. A deletion's marker holds FENCE (no moment at all).
    since: int


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weak references: a read's memory lease ends with it
class CachedAnnotation:
    """One validated version of an annotation, as Label Studio sent it."""

    annotation_id: int
    version: int  # updated_at, integer microseconds since the epoch
    stored_at: float  # wall-clock seconds since the epoch when the proxy asked Label Studio for it
    body: bytes
    project: int | None = None
    task: int | None = None
    etag: str = ""  # see proxy.freshness.entity_tag
    created_at: int | None = None  # microseconds since the epoch, for the live created_ago
    created_ago_span: tuple[int, int] | None = None  # byte span of created_ago's JSON string in body


Lookup = CachedAnnotation | Missing | None


@dataclass(frozen=True, slots=True)
class Superseded:
    """An announcement (:meth:`AnnotationStore.changes`) that an annotation's newest version moved past what was
    cached (:meth:`AnnotationStore.invalidate`): a fetch of it in flight may have left before, and bring back an
    older version. ``token``: the one :meth:`AnnotationStore.invalidate` returned to the process that made it."""

    annotation_id: int
    token: str


class AnnotationStore(Protocol):
    """A cache of annotation versions. Every method raises :class:`CacheError` on a store failure."""

    name: str  # "redis" or "memory", for logs and /readyz

    async def get(self, key: AnnotationKey) -> Lookup:
        """The newest cached version for ``key``, a :class:`Missing` for a remembered 404, or ``None``."""
        ...

    async def get_or_claim(self, key: AnnotationKey, ttl: float) -> tuple[Lookup, bool]:
        """:meth:`get`; and when nothing is cached, :meth:`claim` in the same step (one round trip for a miss):
        ``(None, True)`` when the claim was granted. Not granted while one of this process's loads holds it."""
        ...

    async def put(self, key: AnnotationKey, entry: CachedAnnotation, ttl: float, *, release: bool = False) -> bool:
        """Store ``entry`` for ``ttl`` seconds unless a newer version of the annotation is known; with ``release``,
        give up this process's claim on ``key`` in the same step, whatever the outcome.

        Atomic: of two racing writes the newer version wins, whatever their order. An entry with the same
        version replaces the cached one (Label Studio changes some fields without touching ``updated_at``).
        Refused when a 404 is remembered that was fetched after this entry's fetch began (``stored_at``): the
        entry may predate a deletion; and for an annotation of a task deleted lately (:meth:`task_deleted`), which
        is then remembered as deleted. Otherwise clears a remembered 404. Returns whether the entry was stored.
        """
        ...

    async def put_missing(self, annotation_id: int, ttl: float, *, since: int, release: Variant | None = None) -> bool:
        """Remember a 404 for ``ttl`` seconds and stop serving any cached version of the annotation; give up this
        process's claim on ``(annotation_id, release)`` in the same step when ``release`` names a variant.

        ``since`` (microseconds since the epoch) is when the fetch that saw the 404 began: an entry from a fetch
        that began earlier is refused while the 404 is remembered. :data:`proxy.cache.keyspace.FENCE` (a deletion
        Label Studio announced) refuses every entry until ``ttl`` has passed.

        Refused when the known version (``updated_at``) is later than ``since``: the annotation was created or
        changed after that fetch began (a slow 404 must not undo ``ANNOTATION_CREATED``). Returns whether the 404
        now hides the annotation.
        """
        ...

    async def invalidate(self, annotation_id: int, version: int, ttl: float) -> str:
        """Label Studio says ``version`` is now current: stop serving anything older, or that version itself.

        The pointer moves to ``version`` (unless a newer one is known), so an older version that a slow
        fetch brings back later is refused, and the cached body of ``version`` (if any) is dropped so the next
        request fetches it again. Drops a remembered 404, but for a deletion's (:data:`proxy.cache.keyspace.FENCE`),
        which changes nothing: a deleted annotation is not changed again, so such a change arrived out of order.

        Returns the token of the :class:`Superseded` announcement made (tokens of one process sort in the order it
        made them), or "" when nothing was announced (nothing changed; or a store of one process, which announces
        nothing)."""
        ...

    async def drop(self, annotation_id: int) -> None:
        """Forget the annotation entirely: its versions and any remembered 404."""
        ...

    async def task_deleted(self, task_id: int, ttl: float) -> set[int]:
        """Label Studio deleted the task: the ids of its cached annotations (an index :meth:`put` keeps), the index
        forgotten. For ``ttl`` seconds, :meth:`put` of an annotation of the task is refused and remembered as a
        deletion instead: a fetch that began before the deletion may bring one in that the index did not list."""
        ...

    async def ping(self) -> None:
        """Raise :class:`CacheError` unless the store answers."""
        ...

    async def claim(self, key: AnnotationKey, ttl: float) -> bool:
        """Claim the fetch of ``key`` for ``ttl`` seconds among every process sharing the store.

        True for the one claim granted at a time (always, where one process writes the store); it lapses after
        ``ttl`` if its holder dies. The holder :meth:`release`s it once the result is stored (or the fetch failed).
        A claim that one of this process's loads holds is not granted to another; a process that finds a claim of
        its own that none of its loads holds (its release, or its grant's reply, was lost) takes it over.
        """
        ...

    async def release(self, key: AnnotationKey) -> None:
        """Give up this process's claim on ``key`` (a claim another process holds since is left alone)."""
        ...

    async def reconnect(self) -> None:
        """Drop the idle connections to the store, so that the next operations open new ones (after failures:
        the old ones may be dead). Never raises."""
        ...

    def changes(self) -> AsyncIterator[int | Superseded | None]:
        """Announcements of change, from every process sharing the store, for in-process copies (the hot tier).

        Yields an annotation id each time a write changed what :meth:`get` answered for it (:meth:`put`,
        :meth:`put_missing`, :meth:`invalidate`, :meth:`drop` that took effect), just before it a
        :class:`Superseded` for an :meth:`invalidate`, and ``None`` once listening starts: only from then on is
        nothing missed. An id's first version or first 404, which no process can have
        read, is announced only when a process waits for it (its :meth:`claim` was refused). Ends with
        :class:`CacheError` when the announcements can no longer be heard; changes made meanwhile are lost, so a
        caller must drop its copies and listen again.
        """
        ...

    async def close(self) -> None: ...


# Serialization: a JSON header line, a newline, then the body bytes as Label Studio sent them.
# JSON, never pickle: a value read back from a shared Redis must not be able to run code.

_FORMAT = 1


def encode_entry(entry: CachedAnnotation) -> bytes:
    header = {
        "f": _FORMAT,
        "id": entry.annotation_id,
        "v": entry.version,
        "at": entry.stored_at,
        "p": entry.project,
        "t": entry.task,
        "e": entry.etag,
        "c": entry.created_at,
        "s": list(entry.created_ago_span) if entry.created_ago_span else None,
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + entry.body


def decode_entry(raw: bytes) -> CachedAnnotation:
    """Inverse of :func:`encode_entry`; raises :class:`CacheError` for anything else."""
    header_bytes, newline, body = raw.partition(b"\n")
    try:
        header = json.loads(header_bytes) if newline else None
    except ValueError as exc:
        raise CacheError("undecodable cache entry") from exc
    if not isinstance(header, dict) or header.get("f") != _FORMAT:
        raise CacheError("undecodable cache entry: unknown format")
    try:
        return CachedAnnotation(
            annotation_id=_int(header["id"]),
            version=_int(header["v"]),
            stored_at=float(header["at"]),
            body=body,
            project=_optional_int(header.get("p")),
            task=_optional_int(header.get("t")),
            etag=str(header.get("e", "")),
            created_at=_optional_int(header.get("c")),
            created_ago_span=_span(header.get("s"), len(body)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"undecodable cache entry: {exc!r}") from exc


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _optional_int(value: object) -> int | None:
    return None if value is None else _int(value)


def _span(value: object, size: int) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError("expected a span")
    start, end = _int(value[0]), _int(value[1])
    if not 0 <= start < end <= size:
        raise ValueError("span outside the body")
    return start, end

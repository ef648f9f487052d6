"""The Redis store: two small Lua scripts make each read and each write one atomic round trip.

Redis errors, timeouts and undecodable values are translated into :class:`CacheError` here and nowhere else.
Timeouts are short and nothing is retried: a slow Redis must cost a request milliseconds, not seconds, because
the service then goes to Label Studio instead (the cache fails open).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import AskError, ClusterError, MovedError, RedisError, TryAgainError

from proxy.budget import ByteBudget
from proxy.cache.base import (
    AnnotationKey,
    CachedAnnotation,
    Lookup,
    Missing,
    Superseded,
    Variant,
    decode_entry,
    encode_entry,
)
from proxy.cache.batching import SharedFailure, batched
from proxy.cache.keyspace import FENCE, KeyScheme, version_token
from proxy.cache.topology import Closer, RedisMode, connect, drop_idle_connections
from proxy.errors import CacheBusy, CacheError

# KEYS: missing marker, pointer, and (to claim the fetch when nothing is cached) the claim. ARGV: the version keys'
# prefix, ":<variant>", the largest entry to return, and with the claim, this grant's token, the claim's ttl in ms
# and this process's prefix of tokens (see AnnotationStore.claim and CLAIM_SCRIPT: one round trip for a miss's
# read and claim).
# Returns {0, when the fetch that saw it began} for a remembered 404, the entry bytes, {its size, the version}
# for an entry larger than ARGV[3] (the caller makes room in its memory budget, then GETs it); when nothing is
# cached, nil without a claim key, else {1} for "claimed" or {2} for "another process holds the claim".
READ_SCRIPT = """
local missing_since = redis.call('GET', KEYS[1])
if missing_since then return {0, missing_since} end
local version = redis.call('GET', KEYS[2])
if version then
  local key = ARGV[1] .. version .. ARGV[2]
  local size = redis.call('STRLEN', key)
  if size > tonumber(ARGV[3]) then return {size, version} end
  if size > 0 then return redis.call('GET', key) end
end
if not KEYS[3] then return false end
local holder = redis.call('GET', KEYS[3])
if holder and (string.sub(holder, 1, #ARGV[6]) ~= ARGV[6] or holder > ARGV[4]) then return {2} end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
return {1}
"""

# Entries up to this size come back in the read's one round trip; larger ones wait for room in the memory budget
# first (proxy/budget.py), so that many callers reading distinct large annotations cannot each hold a copy.
LARGE_ENTRY = 256 * 1024
# How long a read waits for that room before it gives up (served as a miss).
ROOM_WAIT = 5.0
# What a large read costs at its peak, in times the entry's size: the reply parser's buffer, the reply's bytes and
# the decoded entry's body (measured at six 5 MB reads at once with redis-py's parser: 2.4).
LARGE_READ_FACTOR = 3

# Every script that changes what a read answered ends by announcing the id: PUBLISH <changes channel> <id>, two of
# its ARGV (the channel is not a key: on a cluster PUBLISH reaches every node from any slot). Every replica hears
# every announcement, so a write announces only what another process may hold a copy of or wait for: a version or
# a 404 replacing one that was there, or an id whose claim a waiter flagged (CLAIM_SCRIPT). A cold id's first
# version, which nobody can have read, is announced to nobody (a copy kept while Redis evicted the id may be
# served for up to PROXY_HOT_TTL more: docs/redis.md). The last ARGV, '1', announces it whatever: a load of this
# very process waits for it.

# KEYS: pointer, version key, missing marker, the claim, its waiters' flag, and (outside a cluster, where they are
# in another slot) the task's index and its deletion marker. ARGV: version token, entry bytes, ttl in ms, fetch
# start token, the changes channel, the id, the claim holder's token ("" to keep any claim), '1' to announce
# whatever, the token of FENCE. Versions and times are fixed-width digit strings, so string comparison is numeric
# order. The claim is released (if that token still holds it) whatever the outcome, so a miss costs two round
# trips in all: the read that claimed, and this. Returns 1 when stored, 0 when a newer version is known or a 404
# seen by a later fetch is remembered, or the task was deleted (then the annotation is remembered as deleted).
WRITE_SCRIPT = """
if ARGV[7] ~= '' and redis.call('GET', KEYS[4]) == ARGV[7] then redis.call('DEL', KEYS[4]) end
local current = redis.call('GET', KEYS[1])
if KEYS[7] and redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[3], ARGV[9], 'PX', ARGV[3])
  local waited = redis.call('DEL', KEYS[5]) == 1
  if current or waited or ARGV[8] == '1' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
  return 0
end
if current and current > ARGV[1] then return 0 end
local missing_since = redis.call('GET', KEYS[3])
if missing_since and missing_since > ARGV[4] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
if KEYS[6] then
  redis.call('SADD', KEYS[6], ARGV[6])
  redis.call('PEXPIRE', KEYS[6], ARGV[3], 'GT')
  redis.call('PEXPIRE', KEYS[6], ARGV[3], 'NX')
end
local waited = redis.call('DEL', KEYS[5]) == 1
if current or missing_since or waited or ARGV[8] == '1' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1
"""

# KEYS: pointer, missing marker, the version's plain key, its expand key. ARGV: version token, ttl in ms, the
# changes channel, the id, the token of FENCE, the Superseded announcement ("~<id> <token>"). Moves the pointer up
# to the version (never down) and drops that version's bodies if they are cached; changes nothing while a deletion's
# marker (FENCE) stands: a change announced after the deletion (webhooks out of order, or replayed) would point back
# at the deleted version's bodies. Announces the Superseded first, then the id (which is all a process of an
# earlier release reads). Returns 1 when it changed (and announced) anything.
INVALIDATE_SCRIPT = """
if redis.call('GET', KEYS[2]) == ARGV[5] then return 0 end
local current = redis.call('GET', KEYS[1])
if current and current > ARGV[1] then return 0 end
if current == ARGV[1] then redis.call('DEL', KEYS[3], KEYS[4]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[6])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: pointer, missing marker, the claim, both variants' waiters' flags (a 404 answers both). ARGV: fetch start
# token, ttl in ms (0: remember nothing), the changes channel, the id, the claim holder's token ("" to keep any
# claim; released whatever the outcome), '1' to announce whatever, and for a deletion (FENCE) its Superseded
# announcement ("" for a fetch's 404), published before the id.
# Returns 0, changing nothing, when the known version is later than the fetch that saw the 404 began.
MISSING_SCRIPT = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('DEL', KEYS[3]) end
local current = redis.call('GET', KEYS[1])
if current and current > ARGV[1] then return 0 end
local marked = redis.call('GET', KEYS[2])
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '0' then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
local waited = redis.call('DEL', KEYS[4], KEYS[5]) > 0
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[7]) end
if current or marked or waited or ARGV[6] == '1' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
"""

# Every grant has a token of its own: this process's prefix and a fixed-width counter, so that a later token of the
# process sorts after an earlier one. A claim (or a claiming read) finding an earlier token with its own process's
# prefix takes it over: RedisStore.claim asks only when none of this process's loads holds it, so such a token is
# one whose release, or whose grant's reply, was lost on the way. A release (alone or in a write) deletes only its
# own grant's token. So a command that reaches Redis late, after this process's next grant (its reply timed out,
# or a later command overtook it on another connection), changes nothing of that grant: a release finds another
# token, a claim a later one.

# KEYS: the claim, its waiters' flag. ARGV: this grant's token, ttl in ms, this process's prefix. Granted (1) when
# free or held under an earlier token of this process; refused (0) otherwise, flagging that someone waits: the
# holder's write then announces its result.
CLAIM_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and (string.sub(holder, 1, #ARGV[3]) ~= ARGV[3] or holder > ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the claim. ARGV: the grant's token. Deletes the claim only if that grant still holds it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: a task's index, its deletion marker. ARGV: the marker's ttl in ms. Marks the task deleted, and forgets and
# returns its index.
TASK_DELETED_SCRIPT = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
"""

# KEYS: pointer, missing marker. ARGV: the changes channel, the id, the Superseded announcement.
DROP_SCRIPT = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)

CHANGES_POLL_SECONDS = 1.0
SUPERSEDED = "~"  # the head of a Superseded announcement: no id starts with it
FENCE_TOKEN = version_token(FENCE)  # a deletion's marker, as the store holds it


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _micros_token(seconds: float) -> str:
    return version_token(round(seconds * 1_000_000))


def _slot_moving(exc: BaseException) -> bool:
    """A redirection the cluster client gave up on: the keys' slot is half way between two nodes."""
    if isinstance(exc, (TryAgainError, AskError, MovedError)):
        return True
    # What redis-py's cluster client raises after following MOVED, ASK and TRYAGAIN replies as often as it will.
    # (A pipeline rewrites the message around it, so it is looked for anywhere in it.)
    return type(exc) is ClusterError and "TTL exhausted" in str(exc)


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    """Whatever the Redis client raises becomes :class:`CacheError` (:class:`CacheBusy` for a moving slot, or a
    batch's failure already counted), naming the exception type but never its text.

    Everything, not only RedisError: a client library that trips over its own state (redis-py's cluster client
    can use a connection another task has just closed, and raise AttributeError or RuntimeError) must cost a
    cache miss, not a 500.
    """
    try:
        yield
    except Exception as exc:
        if _slot_moving(exc):
            raise CacheBusy(f"redis {operation} failed: slot moving ({type(exc).__name__})") from exc
        if isinstance(exc, SharedFailure):  # its batch's failure, counted on another call of the batch
            cause = type(exc.__cause__).__name__
            raise CacheBusy(f"redis {operation} failed: on its batch's connection ({cause})") from exc
        raise CacheError(f"redis {operation} failed: {type(exc).__name__}") from exc


class TaskIndex:
    """Which cached annotations belong to a task (for ``TASKS_DELETED``). Outside a cluster the write script keeps
    it; on a cluster it is in another slot than the annotation's keys, so it is written here, in a second round
    trip (an index entry without a cached version only costs a no-op drop when the task is deleted)."""

    def __init__(self, client: Redis | RedisCluster, keys: KeyScheme) -> None:
        self._client = client
        self._keys = keys
        self._deleted = client.register_script(TASK_DELETED_SCRIPT)

    async def add(self, task_id: int, annotation_id: int, ttl_ms: int) -> bool:
        """Index the annotation under its task; False when the task was deleted meanwhile (the caller then
        remembers the annotation as deleted: the deletion read the index before this)."""
        key = self._keys.task(task_id)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.sadd(key, str(annotation_id))
            pipe.pexpire(key, ttl_ms, gt=True)
            pipe.pexpire(key, ttl_ms, nx=True)
            pipe.exists(self._keys.task_deleted(task_id))
            answers = await pipe.execute()
        return not answers[-1]

    async def deleted(self, task_id: int, ttl_ms: int) -> set[int]:
        with _translated("write"):
            members = await self._deleted(
                keys=[self._keys.task(task_id), self._keys.task_deleted(task_id)], args=[ttl_ms]
            )
        return {int(m) for m in members if m.isdigit()}


class ClaimBook:
    """This process's side of the claims (AnnotationStore.claim): the tokens it asks with, the claims its loads
    hold (each with its grant's token, which its release or write gives back), those with a claim or a claiming
    read on its way to Redis (never two at once: the later would take the claim over from under the earlier), and
    the held ones another of its loads was refused: the holder's write announces its result even when nobody else
    could have seen the id. Each entry ends with the claim's write or release, or lapses with the claim's TTL, as
    the claim in Redis does: a release that never reached the store (the cache's circuit open) must not keep this
    process's later loads of the id waiting. Held claims are kept in the order they were granted: every claim has
    the lookup's TTL, so the first to lapse come first, and each grant forgets those that lapsed at a cost of one
    look at the oldest (amortized)."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.prefix = f"{secrets.token_hex(8)}:"  # this process's, at the head of every token it asks with
        self._grants = itertools.count()
        self._monotonic = monotonic
        self._held: dict[AnnotationKey, tuple[float, str]] = {}  # until when (monotonic, as the TTL in Redis), token
        self._asking: set[AnnotationKey] = set()
        self._waiting: set[AnnotationKey] = set()

    def busy(self, key: AnnotationKey) -> bool:
        """Whether a load of this process holds ``key``'s claim, or a claim of it is on its way."""
        return key in self._asking or self._holds(key)

    def _holds(self, key: AnnotationKey) -> bool:
        held = self._held.get(key)
        if held is None:
            return False
        if held[0] > self._monotonic():
            return True
        self.released(key)  # lapsed, as in Redis
        return False

    def token(self) -> str:
        """A token of this process's, later than every one before it."""
        return f"{self.prefix}{next(self._grants):016x}"

    @contextmanager
    def asking(self, key: AnnotationKey) -> Iterator[str]:
        """Around a round trip that claims ``key``: the token to ask with. Meanwhile this process asks no other."""
        self._asking.add(key)
        try:
            yield self.token()
        finally:
            self._asking.discard(key)

    def __len__(self) -> int:
        """Claims held, lapsed ones not yet forgotten among them."""
        return len(self._held)

    def granted(self, key: AnnotationKey, ttl: float, token: str) -> None:
        now = self._monotonic()
        held = self._held
        while held:  # claims whose release never came, oldest first: those that lapsed go
            oldest = next(iter(held))
            if held[oldest][0] > now:
                break
            self.released(oldest)
        held.pop(key, None)  # granted again: last in line, with its new TTL
        held[key] = now + ttl, token

    def refuses(self, key: AnnotationKey) -> bool:
        """Whether another load of this process asking for ``key``'s claim is refused (:meth:`busy`). Refused
        beside a load that holds it, it waits for that load's write, which then announces its result."""
        if self._holds(key):  # its load ends with a write (which announces) or a release
            self._waiting.add(key)
            return True
        return key in self._asking

    def given_up(self, key: AnnotationKey, release: bool) -> tuple[str, str]:
        """A write's last two arguments: the token that gives up the claim on ``key`` ("" to keep any claim), and
        whether a load of this process waits for the write (:meth:`awaited`)."""
        held = self._held.pop(key, None) if release else None
        return "" if held is None else held[1], self.awaited(key)

    def awaited(self, key: AnnotationKey) -> str:
        """'1' when a load of this process waits for the write of ``key`` (the write then announces whatever)."""
        if key in self._waiting:
            self._waiting.discard(key)
            return "1"
        return ""

    def released(self, key: AnnotationKey) -> str:
        """Forget ``key``'s claim here: the token its release sends ("" when none is held)."""
        held = self._held.pop(key, None)
        self._waiting.discard(key)
        return "" if held is None else held[1]


@dataclass(frozen=True, slots=True)
class Announcer:
    """What a script announces on the changes channel: its ARGV for the id, and the Superseded line of a change
    that moves an annotation past what was cached, with a token of this process's (proxy/loads.py tells its own
    apart by it)."""

    channel: str
    claims: ClaimBook

    def of(self, annotation_id: int) -> tuple[str, str]:
        return self.channel, str(annotation_id)

    def superseded(self, annotation_id: int) -> Superseded:
        return Superseded(annotation_id, self.claims.token())


class RedisStore:
    name = "redis"

    def __init__(
        self,
        client: Redis | RedisCluster,
        keys: KeyScheme,
        *,
        close: Closer | None = None,
        bodies: ByteBudget | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._bodies = bodies  # the memory budget large entries are read in (None: unbounded, for tests)
        self._largest = largest(bodies)
        self._keys = keys
        self._close = close or client.aclose
        # The calls every miss makes go out in batches (proxy/cache/batching.py); the rare ones one by one.
        self._read = batched(client, client.register_script(READ_SCRIPT))
        # The task index shares the write's round trip where one script may touch two slots (not a cluster).
        self._index_in_write = not isinstance(client, RedisCluster)
        self._write = batched(client, client.register_script(WRITE_SCRIPT))
        self._invalidate = client.register_script(INVALIDATE_SCRIPT)
        self._missing = batched(client, client.register_script(MISSING_SCRIPT))
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._drop = client.register_script(DROP_SCRIPT)
        self._tasks = TaskIndex(client, keys)
        self._claims = ClaimBook(monotonic=monotonic)
        self._announcer = Announcer(keys.changes, self._claims)

    async def get(self, key: AnnotationKey) -> Lookup:
        return (await self._read_key(key, claim_ttl=None))[0]

    async def get_or_claim(self, key: AnnotationKey, ttl: float) -> tuple[Lookup, bool]:
        if self._claims.busy(key):  # this process holds it, or is asking: never granted twice
            return await self.get(key), False
        return await self._read_key(key, claim_ttl=ttl)

    async def _read_key(self, key: AnnotationKey, *, claim_ttl: float | None) -> tuple[Lookup, bool]:
        annotation_id, variant = key
        prefix, suffix = self._keys.version_prefix(annotation_id), f":{variant.value}"
        keys = [self._keys.missing(annotation_id), self._keys.pointer(annotation_id)]
        args: list[str | int] = [prefix, suffix, self._largest]
        if claim_ttl is None:
            with _translated("read"):
                raw = await self._read(keys=keys, args=args)
        else:
            keys.append(self._keys.claim(annotation_id, variant))
            with self._claims.asking(key) as token, _translated("read"):
                raw = await self._read(keys=keys, args=[*args, token, _ms(claim_ttl), self._claims.prefix])
            if raw == [1]:
                self._claims.granted(key, claim_ttl, token)
        if isinstance(raw, list) and len(raw) == 1:  # nothing cached: claimed ({1}), or held by another ({2})
            return None, raw[0] == 1
        return await looked_up(self._client, self._bodies, annotation_id, (prefix, suffix), raw), False

    async def put(self, key: AnnotationKey, entry: CachedAnnotation, ttl: float, *, release: bool = False) -> bool:
        annotation_id, variant = key
        ttl_ms = _ms(ttl)
        keys = [
            self._keys.pointer(annotation_id),
            self._keys.version(annotation_id, entry.version, variant),
            self._keys.missing(annotation_id),
            self._keys.claim(annotation_id, variant),
            self._keys.claim_waiters(annotation_id, variant),
        ]
        if entry.task is not None and self._index_in_write:
            keys += [self._keys.task(entry.task), self._keys.task_deleted(entry.task)]
        with _translated("write"):
            stored = await self._write(
                keys=keys,
                args=[
                    version_token(entry.version),
                    encode_entry(entry),
                    ttl_ms,
                    _micros_token(entry.stored_at),
                    *self._announcer.of(annotation_id),
                    *self._claims.given_up(key, release),
                    FENCE_TOKEN,
                ],
            )
            if stored and entry.task is not None and not self._index_in_write:  # a cluster: the index apart
                stored = await self._tasks.add(entry.task, annotation_id, ttl_ms)
                if not stored:  # its task was deleted meanwhile
                    await self.put_missing(annotation_id, ttl, since=FENCE)
        return bool(stored)

    async def put_missing(self, annotation_id: int, ttl: float, *, since: int, release: Variant | None = None) -> bool:
        variant = release or Variant.PLAIN
        key = AnnotationKey(annotation_id, variant)
        with _translated("write"):
            keys = [self._keys.pointer(annotation_id), self._keys.missing(annotation_id), self._keys.claim(*key)]
            keys += [self._keys.claim_waiters(annotation_id, each) for each in Variant]
            stored = await self._missing(
                keys=keys,
                args=[
                    version_token(since),
                    _ms(ttl) if ttl > 0 else 0,
                    *self._announcer.of(annotation_id),
                    *self._claims.given_up(key, release is not None),
                    superseded_line(self._announcer.superseded(annotation_id)) if since == FENCE else "",
                ],
            )
        return bool(stored)

    async def invalidate(self, annotation_id: int, version: int, ttl: float) -> str:
        keys = [self._keys.pointer(annotation_id), self._keys.missing(annotation_id)]
        keys += [self._keys.version(annotation_id, version, variant) for variant in Variant]
        args: list[str | int] = [version_token(version), _ms(ttl), *self._announcer.of(annotation_id), FENCE_TOKEN]
        superseded = self._announcer.superseded(annotation_id)
        with _translated("write"):
            changed = await self._invalidate(keys=keys, args=[*args, superseded_line(superseded)])
        return superseded.token if changed else ""

    async def drop(self, annotation_id: int) -> None:
        keys = [self._keys.pointer(annotation_id), self._keys.missing(annotation_id)]
        args = [*self._announcer.of(annotation_id), superseded_line(self._announcer.superseded(annotation_id))]
        with _translated("write"):
            await self._drop(keys=keys, args=args)

    async def task_deleted(self, task_id: int, ttl: float) -> set[int]:
        return await self._tasks.deleted(task_id, _ms(ttl))

    async def ping(self) -> None:
        with _translated("ping"):
            await self._client.ping()

    async def claim(self, key: AnnotationKey, ttl: float) -> bool:
        if self._claims.refuses(key):  # this process fetches it: wait like another replica
            return False
        annotation_id, variant = key
        keys = [self._keys.claim(annotation_id, variant), self._keys.claim_waiters(annotation_id, variant)]
        with self._claims.asking(key) as token:
            try:
                with _translated("claim"):
                    granted = await self._claim(keys=keys, args=[token, _ms(ttl), self._claims.prefix])
            except CacheError:  # maybe granted all the same: its load fetches, then releases it (proxy/claims.py)
                self._claims.granted(key, ttl, token)
                raise
        if granted:
            self._claims.granted(key, ttl, token)
        return bool(granted)

    async def release(self, key: AnnotationKey) -> None:
        token = self._claims.released(key)
        if not token:  # no claim of this process's to let go
            return
        annotation_id, variant = key
        with _translated("claim"):
            await self._release(keys=[self._keys.claim(annotation_id, variant)], args=[token])

    async def reconnect(self) -> None:
        await drop_idle_connections(self._client)

    def changes(self) -> AsyncIterator[int | Superseded | None]:
        return follow_changes(self._client, self._keys.changes)

    async def close(self) -> None:
        await self._close()


def open_redis_store(
    url: str,
    keys: KeyScheme,
    *,
    timeout: float,
    max_connections: int = 64,
    mode: RedisMode = "standalone",
    bodies: ByteBudget | None = None,
) -> RedisStore:
    """A store on redis-py's own client for ``mode`` (see :mod:`proxy.cache.topology`): short timeouts, no
    retries, a bounded pool. Every script touches the keys of one annotation, which share a cluster slot."""
    client, close = connect(url, mode, timeout=timeout, max_connections=max_connections)
    return RedisStore(client, keys, close=close, bodies=bodies)


def largest(bodies: ByteBudget | None) -> int:
    """The largest entry a read returns at once; larger ones wait for room in the memory budget first."""
    return LARGE_ENTRY if bodies is not None else 2**62


async def looked_up(
    client: Redis | RedisCluster,
    bodies: ByteBudget | None,
    annotation_id: int,
    version_key: tuple[str, str],
    raw: object,
) -> Lookup:
    """What a read script's answer says is cached (``version_key``: the prefix and suffix of the version keys)."""
    if raw is None:
        return None
    if isinstance(raw, list) and raw[0] == 0:
        return Missing(int(raw[1]))
    if isinstance(raw, list):
        assert bodies is not None  # noqa: S101 - a size comes back only when there is a budget
        prefix, suffix = version_key
        return await read_large(client, bodies, annotation_id, int(raw[0]), f"{prefix}{raw[1].decode()}{suffix}")
    if not isinstance(raw, (bytes, str)):
        raise CacheError("undecodable cache entry: not bytes")
    return decoded(annotation_id, raw)


async def read_large(
    client: Redis | RedisCluster, bodies: ByteBudget, annotation_id: int, size: int, version_key: str
) -> Lookup:
    """A large entry, read once there is room for it in the memory budget: :data:`LARGE_READ_FACTOR` times its
    size while it is read and decoded, then its body's size for as long as the decoded entry lives (the response
    being written, the hot tier)."""
    try:
        async with asyncio.timeout(ROOM_WAIT):
            lease = await bodies.lease(LARGE_READ_FACTOR * size)
    except TimeoutError:
        raise CacheBusy("no room in the memory budget to read a large entry") from None
    try:
        with _translated("read"):
            raw = await client.get(version_key)
        if raw is None:  # replaced or evicted since the script looked: a miss
            lease.release()
            return None
        entry = decoded(annotation_id, raw)
    except BaseException:
        lease.release()
        raise
    del raw
    lease.keep(len(entry.body))
    weakref.finalize(entry, lease.release)
    return entry


def decoded(annotation_id: int, raw: bytes | str) -> CachedAnnotation:
    if not isinstance(raw, bytes):
        raise CacheError("undecodable cache entry: not bytes")
    entry = decode_entry(raw)
    if entry.annotation_id != annotation_id:
        raise CacheError("cache entry belongs to another annotation")
    return entry


async def follow_changes(client: Redis | RedisCluster, channel: str) -> AsyncIterator[int | Superseded | None]:
    """The store's announcements (see AnnotationStore.changes): None once subscribed, then changed ids."""
    if isinstance(client, RedisCluster):
        with _translated("subscribe"):
            await client.initialize()  # the cluster's pubsub needs the slot map first
    pubsub = client.pubsub()
    try:
        with _translated("subscribe"):
            await pubsub.subscribe(channel)
            while True:
                # A bounded wait, so that the connection's health check (a PING when idle) runs.
                message = await pubsub.get_message(timeout=CHANGES_POLL_SECONDS)
                if message is None:
                    continue
                if message["type"] == "subscribe":  # also after redis-py reconnected by itself
                    yield None
                elif message["type"] == "message":
                    change = _change(message["data"])
                    if change is not None:
                        yield change
    finally:
        with suppress(Exception):  # closing what already failed
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def superseded_line(change: Superseded) -> str:
    """A Superseded announcement as a script publishes it (:func:`_change` reads it back)."""
    return f"{SUPERSEDED}{change.annotation_id} {change.token}"


def _change(message: bytes | str) -> int | Superseded | None:
    """An announcement as :meth:`RedisStore.changes` yields it; None for one it cannot read."""
    data = message.decode("ascii", "replace") if isinstance(message, bytes) else message
    if data.isdigit():
        return int(data)
    annotation_id, _, token = data.removeprefix(SUPERSEDED).partition(" ")
    if data.startswith(SUPERSEDED) and annotation_id.isdigit() and token:
        return Superseded(int(annotation_id), token)
    return None

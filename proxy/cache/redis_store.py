"""The Redis store: two small Lua scripts make each read and each write one atomic round trip.

Redis errors, timeouts and undecodable values are translated into :class:`CacheError` here and nowhere else.
Timeouts are short and nothing is retried: a slow Redis must cost a request milliseconds, not seconds, because
the service then goes to Label Studio instead (the cache fails open).
"""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.cache.base import (
    MISSING,
    AnnotationKey,
    CachedAnnotation,
    Lookup,
    decode_entry,
    encode_entry,
)
from proxy.cache.keys import KeyScheme, version_token
from proxy.errors import CacheError

# KEYS: missing marker, pointer. ARGV: the version keys' prefix, ":<variant>".
# Returns 1 for a remembered 404, the entry bytes, or nil.
READ_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local version = redis.call('GET', KEYS[2])
if not version then return false end
return redis.call('GET', ARGV[1] .. version .. ARGV[2])
"""

# KEYS: pointer, version key, missing marker. ARGV: version token, entry bytes, ttl in ms.
# Versions are fixed-width digit strings, so string comparison is version order.
# Returns 1 when stored, 0 when a newer version is already known.
WRITE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and current > ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
return 1
"""

REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStore:
    name = "redis"

    def __init__(self, client: Redis, keys: KeyScheme) -> None:
        self._client = client
        self._keys = keys
        self._read = client.register_script(READ_SCRIPT)
        self._write = client.register_script(WRITE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, keys: KeyScheme, *, timeout: float, max_connections: int = 64) -> RedisStore:
        """A client with short timeouts, no retries and a bounded pool (waiting at most ``timeout``)."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        return cls(Redis(connection_pool=pool), keys)

    async def get(self, key: AnnotationKey) -> Lookup:
        annotation_id, variant = key
        try:
            raw = await self._read(
                keys=[self._keys.missing(annotation_id), self._keys.pointer(annotation_id)],
                args=[self._keys.version_prefix(annotation_id), f":{variant.value}"],
            )
        except REDIS_FAILURES as exc:
            raise CacheError(f"redis read failed: {type(exc).__name__}") from exc
        if raw is None:
            return None
        if isinstance(raw, int):
            return MISSING
        entry = decode_entry(raw)
        if entry.annotation_id != annotation_id:
            raise CacheError("cache entry belongs to another annotation")
        return entry

    async def put(self, key: AnnotationKey, entry: CachedAnnotation, ttl: float) -> bool:
        annotation_id, variant = key
        try:
            stored = await self._write(
                keys=[
                    self._keys.pointer(annotation_id),
                    self._keys.version(annotation_id, entry.version, variant),
                    self._keys.missing(annotation_id),
                ],
                args=[version_token(entry.version), encode_entry(entry), _ms(ttl)],
            )
        except REDIS_FAILURES as exc:
            raise CacheError(f"redis write failed: {type(exc).__name__}") from exc
        return bool(stored)

    async def put_missing(self, annotation_id: int, ttl: float) -> None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.pointer(annotation_id))
                if ttl > 0:
                    pipe.set(self._keys.missing(annotation_id), b"1", px=_ms(ttl))
                await pipe.execute()
        except REDIS_FAILURES as exc:
            raise CacheError(f"redis write failed: {type(exc).__name__}") from exc

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except REDIS_FAILURES as exc:
            raise CacheError(f"redis ping failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()

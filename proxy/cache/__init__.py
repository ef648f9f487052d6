"""The annotation cache: a store protocol and its two adapters, Redis and in-process memory."""

from proxy.cache.base import (
    AnnotationKey,
    AnnotationStore,
    CachedAnnotation,
    Lookup,
    Missing,
    Superseded,
    Variant,
)
from proxy.cache.keyspace import KeyScheme
from proxy.cache.memory import MemoryStore
from proxy.cache.redis_store import RedisStore, open_redis_store

__all__ = [
    "AnnotationKey",
    "AnnotationStore",
    "CachedAnnotation",
    "KeyScheme",
    "Lookup",
    "MemoryStore",
    "Missing",
    "RedisStore",
    "Superseded",
    "Variant",
    "open_redis_store",
]

"""The lookup's inputs for tests of it on its own: a cache policy, and a 200 reply from Label Studio
(test_service, test_hot, test_replicas)."""

from __future__ import annotations

from proxy.exchange import UpstreamReply
from proxy.service import CachePolicy
from tests.support.samples import encode, sample

POLICY = CachePolicy(ttl=300, stale_ttl=3600, negative_ttl=30)
V1 = "2026-11-28T12:00:00.000001Z"
V2 = "2026-11-28T12:00:00.000002Z"


def ok(annotation_id: int = 1, updated_at: str = V1, **changes: object) -> UpstreamReply:
    return UpstreamReply(200, encode(sample(id=annotation_id, updated_at=updated_at, **changes)))

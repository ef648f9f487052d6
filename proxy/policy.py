"""How long cached answers live, and where annotations come from on a miss: what the lookup is configured with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.directives import RequestDirectives, without_forcing
from proxy.exchange import UpstreamReply


class AnnotationSource(Protocol):
    """Where annotations come from on a miss: :class:`proxy.upstream.LabelStudioClient`."""

    async def fetch_annotation(self, annotation_id: int, *, expand: bool, request_id: str) -> UpstreamReply: ...


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long cached answers live (seconds)."""

    ttl: float  # a version is fresh this long after it was fetched
    stale_ttl: float  # then served stale (while one background fetch revalidates it) this much longer
    negative_ttl: float  # a Label Studio 404 is remembered this long
    stale_if_error_ttl: float = 0.0  # while Label Studio fails, a version this young is served instead of an error
    claim_ttl: float = 0.0  # > 0: a miss claims its fetch across replicas for this long (see AnnotationStore.claim)
    # A version that only a webhook vouches for holds back older ones this long: as long as a fetch that began
    # before the webhook can take. Label Studio confirms it by serving it (the fetch stores it for `retention`);
    # a version it never serves (a forged or far-future updated_at, a clock that went back) stops blocking then.
    fence_ttl: float = 15.0
    # Whether a request's Cache-Control (no-cache, max-age, min-fresh, max-stale) may make the proxy ask Label
    # Studio before answering (proxy/directives.py; PROXY_CLIENT_REVALIDATION).
    client_revalidation: bool = True

    @property
    def retention(self) -> float:
        """How long the store keeps a version (and a deleted annotation's tombstone)."""
        return max(self.ttl + self.stale_ttl, self.stale_if_error_ttl)

    def honoured(self, directives: RequestDirectives) -> RequestDirectives:
        """A request's directives as the proxy honours them: with client revalidation off, nothing in them forces
        a fetch."""
        if directives.ordinary or self.client_revalidation:
            return directives
        return without_forcing(directives, stale_window=self.stale_ttl)

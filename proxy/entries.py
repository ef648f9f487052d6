"""A cache entry from Label Studio's answer, in one place: the body validated (never stored or served when it
fails), its version (``updated_at`` in microseconds), its ``created_ago`` span, its entity tag."""

from __future__ import annotations

from proxy.cache import CachedAnnotation
from proxy.created_ago import find_created_ago
from proxy.freshness import entity_tag
from proxy.models import epoch_micros, validate_annotation


def entry_from_body(body: bytes, *, annotation_id: int, expand: bool, fetched_at: float) -> CachedAnnotation:
    """Raises :class:`proxy.errors.InvalidUpstreamBody` for a body that is not a valid annotation ``annotation_id``.

    ``fetched_at`` is when the fetch began: what Label Studio answered is at least that recent."""
    annotation = validate_annotation(body, annotation_id=annotation_id, expand=expand)
    span = find_created_ago(body, known=True)  # validate_annotation parsed it, and found created_ago a string
    return CachedAnnotation(
        annotation_id=annotation_id,
        version=epoch_micros(annotation.updated_at),
        stored_at=fetched_at,
        body=body,
        project=annotation.project,
        task=annotation.task,
        etag=entity_tag(body, span),
        created_at=epoch_micros(annotation.created_at),
        created_ago_span=span,
    )

"""A pydantic model of the annotation body Label Studio returns from ``GET /api/annotations/{id}/``.

Fields, types and nullability follow Label Studio's API page for the endpoint. Validation is strict (no
coercion: ``"5"`` is not an integer, ``1`` is not a boolean) because a body of the wrong shape means something
is wrong upstream, and the proxy must not cache it. Unknown fields are allowed: newer Label Studio versions add
them. The model only *checks* a body; the proxy serves Label Studio's own bytes, never a re-serialization.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from proxy.errors import InvalidUpstreamBody

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NON_JSON_NUMBER = re.compile(rb"NaN|Infinity")
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _timestamp(value: object) -> datetime:
    """An ISO 8601 string, as Label Studio writes datetimes, from 1970 on (naive means UTC).

    Stricter than pydantic, which would also read numbers and numeric strings as Unix timestamps. An
    annotation's versions are its ``updated_at`` in microseconds since the epoch, so never negative.
    """
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        raise ValueError("expected an ISO 8601 datetime string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:  # its message quotes the value; a refusal must not echo upstream data
        raise ValueError("not a valid ISO 8601 datetime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment < _EPOCH:
        raise ValueError("a datetime before 1970 is not one Label Studio writes")
    return moment


Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
PositiveId = Annotated[int, Field(ge=1, le=INT64_MAX)]

LastAction = Literal[
    "prediction",
    "propagated_annotation",
    "imported",
    "submitted",
    "updated",
    "skipped",
    "accepted",
    "rejected",
    "fixed_and_accepted",
    "deleted_review",
]


class CompletedByUser(BaseModel):
    """``completed_by`` as ``?expand=completed_by`` renders it."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    id: PositiveId
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    avatar: str | None = None
    initials: str | None = None


class Annotation(BaseModel):
    """The annotation body (plain variant: ``completed_by`` is a user id)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    id: PositiveId
    result: list[dict[str, Any]] | None
    created_username: str
    created_ago: str
    completed_by: int | None
    was_cancelled: bool | None
    ground_truth: bool | None
    created_at: Timestamp
    updated_at: Timestamp
    draft_created_at: Timestamp | None
    lead_time: float | None
    import_id: Int64 | None
    last_action: LastAction | None
    bulk_created: bool | None
    task: int | None
    project: int | None
    updated_by: int | None
    parent_prediction: int | None
    parent_annotation: int | None
    last_created_by: int | None
    # Listed on the API page, but only rendered when two feature flags are on.
    state: str | None = None


class ExpandedAnnotation(Annotation):
    """The body for ``?expand=completed_by``: ``completed_by`` is an object."""

    completed_by: CompletedByUser | None  # type: ignore[assignment]


def epoch_micros(moment: datetime) -> int:
    """Integer microseconds since the epoch (naive means UTC). Of ``updated_at``, an annotation's version."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_micros(micros: int) -> datetime:
    """Inverse of :func:`epoch_micros`, in UTC."""
    return _EPOCH + timedelta(microseconds=micros)


def summarize(exc: ValidationError, *, count_the_rest: bool = True) -> str:
    """A short reason naming the fields at fault (the first three), never echoing the values: for Label Studio's
    bodies here and webhook events (:mod:`proxy.events`); settings name their variables instead
    (:func:`proxy.settings.format_validation_error`)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(problems)
    if more > 0 and count_the_rest:
        problems.append(f"and {more} more")
    return "; ".join(problems)


def validate_annotation(body: bytes, *, annotation_id: int, expand: bool) -> Annotation:
    """Parse and check one upstream body; raise :class:`InvalidUpstreamBody` with a clear reason."""
    model = ExpandedAnnotation if expand else Annotation
    if _NON_JSON_NUMBER.search(body):
        # pydantic's parser reads NaN and Infinity, which are not JSON (RFC 8259) and which Label Studio's
        # renderer never writes; a caller's strict parser would fail on them. Rare, so only then parse twice.
        try:
            from_json(body, allow_inf_nan=False)
        except ValueError:
            raise InvalidUpstreamBody(
                "Label Studio returned an invalid annotation body: the body is not valid JSON."
            ) from None
    try:
        annotation = model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            reason = "the body is not valid JSON"
        elif any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            reason = "the body is not a JSON object"
        else:
            reason = summarize(exc)
        raise InvalidUpstreamBody(f"Label Studio returned an invalid annotation body: {reason}.") from None
    if annotation.id != annotation_id:
        raise InvalidUpstreamBody(
            "Label Studio returned an invalid annotation body: "
            f"it is annotation {annotation.id}, not the requested {annotation_id}."
        )
    return annotation

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.errors import InvalidUpstreamBody
from proxy.models import epoch_micros, validate_annotation
from tests.support.samples import SAMPLE_BODY, SAMPLE_PATH, encode, sample


def test_shared_sample_matches_our_copy() -> None:
    if not SAMPLE_PATH.exists():
        pytest.skip(f"{SAMPLE_PATH} is not present")
    assert json.loads(SAMPLE_PATH.read_bytes()) == json.loads(SAMPLE_BODY)


def test_real_label_studio_body_is_valid() -> None:
    annotation = validate_annotation(SAMPLE_BODY, annotation_id=1, expand=False)
    assert annotation.updated_at == datetime(2026, 11, 28, 12, 27, 33, 279137, tzinfo=UTC)
    assert annotation.project == 1
    assert annotation.task == 1


def test_unknown_fields_from_newer_label_studio_are_allowed() -> None:
    validate_annotation(encode(sample(state="submitted", brand_new_field={"x": 1})), annotation_id=1, expand=False)


def test_nullable_fields_may_be_null() -> None:
    nulls = dict.fromkeys(
        ["result", "completed_by", "was_cancelled", "ground_truth", "draft_created_at", "lead_time",
         "import_id", "last_action", "bulk_created", "task", "project", "updated_by",
         "parent_prediction", "parent_annotation", "last_created_by"]
    )  # fmt: skip
    validate_annotation(encode(sample(**nulls)), annotation_id=1, expand=False)


def test_integer_lead_time_is_a_number() -> None:
    validate_annotation(encode(sample(lead_time=3)), annotation_id=1, expand=False)


def test_expanded_completed_by_is_an_object() -> None:
    user = {"id": 1, "first_name": "", "last_name": "", "avatar": None, "email": "a@b.c", "initials": "a"}
    validate_annotation(encode(sample(completed_by=user)), annotation_id=1, expand=True)
    with pytest.raises(InvalidUpstreamBody):
        validate_annotation(encode(sample(completed_by=user)), annotation_id=1, expand=False)
    with pytest.raises(InvalidUpstreamBody):
        validate_annotation(encode(sample(completed_by=1)), annotation_id=1, expand=True)


@pytest.mark.parametrize("action", ["prediction", "submitted", "fixed_and_accepted", "deleted_review", None])
def test_listed_last_actions_are_valid(action: str | None) -> None:
    validate_annotation(encode(sample(last_action=action)), annotation_id=1, expand=False)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"was_cancelled": 1}, "was_cancelled"),
        ({"task": "1"}, "task"),
        ({"lead_time": "3.5"}, "lead_time"),
        ({"result": {"not": "a list"}}, "result"),
        ({"result": [1, 2]}, "result"),
        ({"last_action": "exploded"}, "last_action"),
        ({"import_id": 2**63}, "import_id"),
        ({"import_id": -(2**63) - 1}, "import_id"),
        ({"updated_at": "yesterday"}, "updated_at"),
        ({"updated_at": "-1"}, "updated_at"),
        ({"updated_at": 1795868853}, "updated_at"),
        ({"updated_at": "1969-12-31T23:59:59Z"}, "updated_at"),
        ({"created_at": "0001-01-01T00:00:00Z"}, "created_at"),
        ({"draft_created_at": "12"}, "draft_created_at"),
        ({"created_username": None}, "created_username"),
        ({"id": "1"}, "id"),
    ],
)
def test_wrong_shapes_are_rejected_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidUpstreamBody, match=field) as caught:
        validate_annotation(encode(sample(**changes)), annotation_id=1, expand=False)
    assert caught.value.status == 502


def test_missing_field_is_rejected() -> None:
    body = sample()
    del body["updated_at"]
    with pytest.raises(InvalidUpstreamBody, match="updated_at: Field required"):
        validate_annotation(encode(body), annotation_id=1, expand=False)


def test_int64_bounds_are_inclusive() -> None:
    for value in (2**63 - 1, -(2**63)):
        validate_annotation(encode(sample(import_id=value)), annotation_id=1, expand=False)


def test_body_for_another_id_is_rejected() -> None:
    with pytest.raises(InvalidUpstreamBody, match="it is annotation 1, not the requested 2"):
        validate_annotation(SAMPLE_BODY, annotation_id=2, expand=False)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"id": 1', "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
    ],
)
def test_non_json_bodies_are_rejected(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidUpstreamBody, match=reason):
        validate_annotation(body, annotation_id=1, expand=False)


def test_rejection_detail_does_not_echo_upstream_values() -> None:
    with pytest.raises(InvalidUpstreamBody) as caught:
        validate_annotation(encode(sample(last_action="SECRET-LOOKING-VALUE")), annotation_id=1, expand=False)
    assert "SECRET-LOOKING-VALUE" not in caught.value.detail


def test_versions_order_as_updated_at() -> None:
    earlier = datetime(2026, 11, 28, 12, 27, 33, 279137, tzinfo=UTC)
    later = datetime(2026, 11, 28, 12, 27, 33, 279138, tzinfo=UTC)
    assert epoch_micros(later) - epoch_micros(earlier) == 1
    assert epoch_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_micros(earlier) == 1_795_868_853_279_137

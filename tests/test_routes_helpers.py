"""The pure parts of the HTTP edge: id parsing, expand, request ids, error bodies, Cache-Status."""

from __future__ import annotations

import json

import pytest

from proxy import __version__
from proxy.cache_status import cache_status
from proxy.edge import error_body, request_id_from
from proxy.errors import AnnotationNotFound
from proxy.routes import parse_annotation_id, wants_expanded


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("06", 6), ("000042", 42), ("9223372036854775807", 2**63 - 1)])
def test_ids_read_as_label_studio_reads_them(raw: str, expected: int) -> None:
    assert parse_annotation_id(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "0", "000", "9223372036854775808", "99999999999999999999999", "1" * 5000,
        "-1", "+1", "1.0", "1e3", " 1", "1 ", "abc", "", "%31", "1%2F", "..", "%2e%2e",
        "\u0661", "\uff11", "0x10", "1_000",
    ],
)  # fmt: skip
def test_ids_that_name_no_annotation_are_404(raw: str) -> None:
    with pytest.raises(AnnotationNotFound):
        parse_annotation_id(raw)


@pytest.mark.parametrize(
    ("values", "expanded"),
    [
        ([], False),
        (["completed_by"], True),
        (["task,completed_by"], True),
        ([" completed_by "], True),
        (["completed"], False),
        (["task", "completed_by"], True),
        (["completed_by_x"], False),
    ],
)
def test_expand_variant(values: list[str], expanded: bool) -> None:
    assert wants_expanded(values) is expanded


def test_sane_request_ids_are_kept_others_replaced() -> None:
    assert request_id_from("abc-123_x.y:z") == "abc-123_x.y:z"
    for hostile in ("", "a" * 129, "has space", "new\nline", "<script>", "-leading-dash", "ü"):
        replaced = request_id_from(hostile)
        assert replaced != hostile
        assert len(replaced) == 32
    assert request_id_from(None) != request_id_from(None)


def test_error_body_has_label_studio_shape() -> None:
    body = json.loads(error_body(404, "No Annotation matches the given query."))
    assert list(body) == ["id", "status_code", "version", "detail", "exc_info"]
    assert body["status_code"] == 404
    assert body["version"] == __version__
    assert body["exc_info"] is None
    assert json.loads(error_body(404, "x"))["id"] != body["id"]


def test_cache_status_values() -> None:
    assert cache_status(hit=True) == "annotation-proxy; hit"
    assert cache_status(fwd_status=200, stored=True) == "annotation-proxy; fwd=miss; fwd-status=200; stored"
    assert cache_status(fwd_status=200, stored=True, collapsed=True) == (
        "annotation-proxy; fwd=miss; fwd-status=200; stored; collapsed"
    )
    assert cache_status(fwd_status=None, detail="timeout") == "annotation-proxy; fwd=miss; detail=timeout"

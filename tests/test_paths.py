"""proxy/paths.py: what is read off a raw path is computed once per path, and the memo stays small whatever paths
callers send."""

from __future__ import annotations

import pytest

from proxy.errors import AnnotationNotFound
from proxy.paths import MAX_PATH_LENGTH, MAX_PATHS, PathMemo
from proxy.routes import id_in_path


def test_each_path_is_read_once_and_answers_as_the_function_does() -> None:
    calls: list[str] = []

    def segments(raw_path: str) -> int:
        calls.append(raw_path)
        return raw_path.count("/")

    memo = PathMemo(segments)
    assert [memo(p) for p in ("/a/b", "/a", "/a/b", "/a")] == [2, 1, 2, 1]
    assert calls == ["/a/b", "/a"]


def test_a_call_that_raises_keeps_nothing() -> None:
    with pytest.raises(AnnotationNotFound):
        id_in_path("/api/annotations/x1/")
    with pytest.raises(AnnotationNotFound):  # raised again, not an answer kept from the first time
        id_in_path("/api/annotations/x1/")
    assert id_in_path("/api/annotations/0017/") == 17


def test_the_id_is_read_off_the_request_line_as_sent_a_query_or_fragment_aside() -> None:
    assert id_in_path("/api/annotations/17?expand=completed_by") == 17
    assert id_in_path("/api/annotations/17#x") == 17
    assert id_in_path("/api/annotations/17?format=json#x") == 17
    with pytest.raises(AnnotationNotFound):
        id_in_path("/api/annotations/?17")


def test_ever_new_paths_cost_a_recomputation_not_memory() -> None:
    memo = PathMemo(len)
    long_path = "/" + "a" * MAX_PATH_LENGTH
    assert memo(long_path) == MAX_PATH_LENGTH + 1
    assert len(memo) == 0  # too long to keep
    for n in range(3 * MAX_PATHS):
        assert memo(f"/api/annotations/{n}/") == len(f"/api/annotations/{n}/")
        assert len(memo) <= MAX_PATHS

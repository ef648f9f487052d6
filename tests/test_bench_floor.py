"""bench/floor.py's pass-through, the cold rows' floor (d1): what it answers is what the upstream answered, so the
row measures a miss's whole exchange and not an error page."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial

import pytest

from bench.run import floor, reference_server, upstream
from bench.upstream import body_for


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - a loopback URL made here
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def passthrough() -> Iterator[str]:
    with (
        reference_server("upstream", upstream) as (up, _),
        reference_server("d1", partial(floor, kind="passthrough", upstream_url=up)) as (base, _),
    ):
        yield base


def test_the_floor_answers_an_annotation_with_the_upstreams_body(passthrough: str) -> None:
    status, body = get(f"{passthrough}/api/annotations/123456/")
    assert status == 200
    assert body == body_for(123456)
    assert json.loads(body)["id"] == 123456


def test_the_floor_passes_the_upstreams_status_through(passthrough: str) -> None:
    status, _ = get(f"{passthrough}/api/annotations/not-a-number/")
    assert status == 404

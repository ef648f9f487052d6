"""bench/floor.py's pass-through, the cold rows' floor (d1): what it answers is what the upstream answered, so the
row measures a miss's whole exchange and not an error page."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from bench.run import LOOPBACK, ROOT, floor, free_port, running, upstream
from bench.upstream import body_for


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - a loopback URL made here
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def passthrough() -> Iterator[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    up, port = free_port(), free_port()
    with (
        running(upstream(up, latency=0.0), url=f"http://{LOOPBACK}:{up}/health", what="upstream", env=env),
        running(
            floor(port, "passthrough", f"http://{LOOPBACK}:{up}"),
            url=f"http://{LOOPBACK}:{port}/health",
            what="passthrough",
            env=env,
        ),
    ):
        yield f"http://{LOOPBACK}:{port}"


def test_the_floor_answers_an_annotation_with_the_upstreams_body(passthrough: str) -> None:
    status, body = get(f"{passthrough}/api/annotations/123456/")
    assert status == 200
    assert body == body_for(123456)
    assert json.loads(body)["id"] == 123456


def test_the_floor_passes_the_upstreams_status_through(passthrough: str) -> None:
    status, _ = get(f"{passthrough}/api/annotations/not-a-number/")
    assert status == 404

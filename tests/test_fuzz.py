"""Property-based tests (hypothesis) for what callers and Label Studio can send the proxy.

- ``parse_annotation_id`` over any text: an id in [1, 2^63-1] exactly for plain ASCII digits, else 404.
- ``validate_annotation`` over any JSON, mutations of a real body and random bytes: a valid annotation with the
  requested id, or ``InvalidUpstreamBody``; never another exception.
- The HTTP edge over real sockets: any path segment, sent byte for byte, is never a 5xx and reaches Label Studio
  only when it names an annotation id.

Every test is derandomized (a fixed seed derived from the test) with no example database: CI sees the same
examples on every run, so a failure reproduces and the run time is stable. New examples come from changing the
strategies or ``max_examples``, not from chance.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from proxy.errors import AnnotationNotFound, InvalidUpstreamBody
from proxy.models import INT64_MAX, Annotation, LastAction, epoch_micros, validate_annotation
from proxy.routes import parse_annotation_id
from tests.support.live import Live, running_proxy
from tests.support.proxies import CLIENT_KEY
from tests.support.samples import SAMPLE_BODY

ANNOTATIONS = 3  # the live fake has annotations 1..3
PLAIN_DIGITS = re.compile(r"[0-9]+")


def fuzz(max_examples: int) -> Any:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def names_an_annotation(raw: str) -> bool:
    """The oracle: plain ASCII digits (leading zeros allowed) for 1 to 2^63-1, as docs/api.md's Responses says."""
    return raw.isascii() and PLAIN_DIGITS.fullmatch(raw) is not None and 1 <= int(raw) <= INT64_MAX


# Strategies: everything, and the neighbourhood of the valid ids where a parser goes wrong.
any_character = st.one_of(st.characters(), st.characters(categories=["Cs"]))  # surrogates too
digit_strings = st.from_regex(r"[0-9]{1,25}", fullmatch=True)
zero_padded = st.tuples(st.integers(0, 30), st.integers(0, 2**70)).map(lambda z: "0" * z[0] + str(z[1]))
int64_edges = st.integers(INT64_MAX - 3, INT64_MAX + 3).map(str) | st.integers(0, 60).map(lambda e: str(10**e))
percent_escapes = st.from_regex(r"(%[0-9A-Fa-f]{2}|%3[0-9]|[0-9]|\.|/|%2[eEfF]){1,12}", fullmatch=True)
unicode_digits = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6)
number_lookalikes = st.sampled_from(
    ["+1", "-1", "1.0", "1e3", "0x10", "1_000", " 1", "1 ", "1\n", "\t1", "\uff11", "\u0661", "1\x00", "0", "00", ""]
)
id_segments = st.one_of(
    st.text(any_character),
    digit_strings,
    zero_padded,
    int64_edges,
    percent_escapes,
    unicode_digits,
    number_lookalikes,
)


# (a) The id parser


@fuzz(1000)
@given(id_segments)
@example("9223372036854775807")
@example("09223372036854775807")
@example("9223372036854775808")
def test_an_id_is_plain_ascii_digits_from_1_to_int64_max_or_404(raw: str) -> None:
    event("an id" if names_an_annotation(raw) else "not an id")
    try:
        parsed = parse_annotation_id(raw)
    except AnnotationNotFound:
        assert not names_an_annotation(raw)
    else:
        assert names_an_annotation(raw)
        assert parsed == int(raw)
        assert 1 <= parsed <= INT64_MAX


# (b) The validator

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities too: json.dumps writes them, a strict parser must refuse them
    st.text(any_character),
    st.sampled_from(["1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "2026-11-28 12:27:33", "9999-12-31T23:59:59Z"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(any_character), children, max_size=5),
    max_leaves=20,
)
SAMPLE: dict[str, Any] = json.loads(SAMPLE_BODY)


def to_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    """Label Studio's real body with a few keys dropped, replaced by any JSON, or renamed."""
    body = dict(SAMPLE)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(SAMPLE)))
        action = draw(st.sampled_from(["drop", "replace", "replace", "rename"]))
        if action == "drop":
            body.pop(key, None)
        elif action == "replace":
            body[key] = draw(json_values)
        else:
            body[key.upper()] = body.pop(key, None)
    return to_json(body)


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytes:
    """The real body cut short, or with bytes overwritten: what a broken connection or proxy delivers."""
    body = bytearray(SAMPLE_BODY)
    if draw(st.booleans()):
        return bytes(body[: draw(st.integers(0, len(body) - 1))])
    for _ in range(draw(st.integers(1, 3))):
        body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return bytes(body)


timestamps = st.builds(
    lambda moment, sep: moment.isoformat(sep=sep),
    st.datetimes(min_value=datetime(1969, 12, 31), timezones=st.none() | st.just(UTC) | st.timezones()),
    st.sampled_from(["T", " "]),
)
maybe_ints = st.none() | st.integers() | st.integers(-(2**63), 2**63)
maybe_bools = st.none() | st.booleans()


@st.composite
def well_typed_bodies(draw: st.DrawFn) -> tuple[bytes, int]:
    """Bodies of the right shape with values anywhere in their types' ranges, and the id they are asked for."""
    annotation_id = draw(st.integers(1, INT64_MAX))
    body = {
        "id": draw(st.just(annotation_id) | st.integers(-1, INT64_MAX + 1)),
        "result": draw(st.none() | st.lists(st.dictionaries(st.text(), json_values, max_size=3), max_size=3)),
        "created_username": draw(st.text()),
        "created_ago": draw(st.text()),
        "completed_by": draw(maybe_ints),
        "was_cancelled": draw(maybe_bools),
        "ground_truth": draw(maybe_bools),
        "created_at": draw(timestamps),
        "updated_at": draw(timestamps),
        "draft_created_at": draw(st.none() | timestamps),
        "lead_time": draw(st.none() | st.floats() | st.integers()),
        "import_id": draw(maybe_ints),
        "last_action": draw(st.none() | st.sampled_from(get_args(LastAction)) | st.text(max_size=3)),
        "bulk_created": draw(maybe_bools),
        "task": draw(maybe_ints),
        "project": draw(maybe_ints),
        "updated_by": draw(maybe_ints),
        "parent_prediction": draw(maybe_ints),
        "parent_annotation": draw(maybe_ints),
        "last_created_by": draw(maybe_ints),
    }
    extra = draw(st.dictionaries(st.text().filter(lambda k: k not in body), json_values, max_size=3))
    return to_json(body | extra), annotation_id


upstream_bodies = st.one_of(
    json_values.map(to_json),
    st.dictionaries(st.sampled_from(sorted(SAMPLE)), json_values).map(lambda d: to_json(SAMPLE | d)),
    mutated_samples(),
    damaged_bytes(),
    st.binary(max_size=2000),
)
requested_ids = st.one_of(st.just(1), st.integers(1, INT64_MAX))


def check_validation(body: bytes, annotation_id: int, expand: bool) -> Annotation | None:
    """The property: a valid annotation of the requested id, or InvalidUpstreamBody. Nothing else escapes."""
    try:
        annotation = validate_annotation(body, annotation_id=annotation_id, expand=expand)
    except InvalidUpstreamBody as exc:
        refusal = exc
    else:
        refusal = None
    if refusal is not None:
        assert refusal.status == 502
        assert refusal.detail.startswith("Label Studio returned an invalid annotation body: ")
        return None
    assert annotation.id == annotation_id
    assert isinstance(json.loads(body), dict)
    assert epoch_micros(annotation.updated_at) >= 0  # a version is never negative
    assert epoch_micros(annotation.created_at) >= 0
    return annotation


@fuzz(500)
@given(body=upstream_bodies, annotation_id=requested_ids, expand=st.booleans())
@example(body=SAMPLE_BODY, annotation_id=1, expand=False)
@example(body=b"[" * 100_000, annotation_id=1, expand=False)
@example(body=b'{"id": 1e400}', annotation_id=1, expand=False)
@example(body=b"\xef\xbb\xbf" + SAMPLE_BODY, annotation_id=1, expand=False)
@example(body=SAMPLE_BODY.replace(b"3.5", b"NaN"), annotation_id=1, expand=False)
def test_any_upstream_body_validates_or_is_refused(body: bytes, annotation_id: int, expand: bool) -> None:
    event("valid" if check_validation(body, annotation_id, expand) else "refused")


@fuzz(300)
@given(well_typed_bodies())
def test_a_well_typed_body_validates_or_is_refused(case: tuple[bytes, int]) -> None:
    body, annotation_id = case
    event("valid" if check_validation(body, annotation_id, expand=False) else "refused")


def test_the_fuzzed_validator_accepts_the_real_body() -> None:
    """The property above is not vacuous: the real body passes under its own id and is refused under another."""
    assert check_validation(SAMPLE_BODY, 1, expand=False) is not None
    assert check_validation(SAMPLE_BODY, 2, expand=False) is None


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_number_literals_that_are_not_json_are_refused(literal: bytes) -> None:
    with pytest.raises(InvalidUpstreamBody):
        validate_annotation(
            SAMPLE_BODY.replace(b'"lead_time":3.5', b'"lead_time":' + literal), annotation_id=1, expand=False
        )


MARKER = "UPSTREAM-VALUE-7f3a"


@fuzz(200)
@given(key=st.sampled_from(sorted(SAMPLE)), prefix=st.sampled_from(["", "2026-11-28T12:27", "x", "1"]))
def test_a_refusal_never_echoes_upstream_values(key: str, prefix: str) -> None:
    body = to_json(SAMPLE | {key: prefix + MARKER})
    detail = ""
    try:
        validate_annotation(body, annotation_id=1, expand=False)
    except InvalidUpstreamBody as exc:
        detail = exc.detail
    assert MARKER not in detail


# (c) The HTTP edge, end to end


@pytest.fixture(scope="module")
def live() -> Any:
    with running_proxy(annotations=ANNOTATIONS, proxy_upstream_timeout=5) as running:
        yield running


async def raw_get(live: Live, target: bytes) -> tuple[int, bytes]:
    """``GET <target>`` exactly as given, over a plain socket: no client normalises or refuses anything."""
    reader, writer = await asyncio.open_connection(live.host, live.port)
    try:
        writer.write(
            b"GET " + target + b" HTTP/1.1\r\nHost: proxy\r\nAuthorization: Token " + CLIENT_KEY.encode() + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# What fits in a request target: anything but the bytes that end it (space, CR, LF) or start a query or fragment.
target_bytes = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in b" \r\n?#"))
sendable_segments = id_segments.map(lambda s: "".join(c for c in s if c not in " \r\n?#"))
raw_segments = st.one_of(
    sendable_segments.map(lambda s: s.encode("utf-8", "surrogatepass")),
    target_bytes,
)


@fuzz(400)
@given(segment=raw_segments, slash=st.booleans())
@example(segment=b"1", slash=True)
@example(segment=b"0003", slash=False)
@example(segment=b"9223372036854775807", slash=True)
@example(segment=b"1/../2", slash=True)
@example(segment=b"%2e%2e/%2e%2e/users", slash=True)
def test_a_path_segment_reaches_label_studio_only_when_it_names_an_annotation(
    live: Live, segment: bytes, slash: bool
) -> None:
    before = len(live.fake.requests)
    target = b"/api/annotations/" + segment + (b"/" if slash else b"")
    status, body = live.run(raw_get(live, target))
    sent = live.fake.requests[before:]

    assert status < 500, (target, status, body)
    text = segment.decode("utf-8", "surrogateescape")
    event(f"{'an id' if names_an_annotation(text) else 'not an id'}: {status}")  # --hypothesis-show-statistics
    if names_an_annotation(text):
        annotation_id = int(text)
        assert {request.path for request in sent} <= {f"/api/annotations/{annotation_id}/"}
        if annotation_id <= ANNOTATIONS:
            assert status == 200
            assert json.loads(body)["id"] == annotation_id
        else:
            assert status == 404
    else:
        assert sent == [], (target, sent)
        assert status in (400, 404)  # 400: aiohttp's parser refused the request line; 404: the proxy did
        if status == 404:  # the id refused, or no route at all (the segment held a "/")
            detail = json.loads(body)["detail"]
            assert detail in ("No Annotation matches the given query.", "Not found.")

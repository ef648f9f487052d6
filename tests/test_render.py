"""``proxy.render``: a cached body's ``created_ago`` rendered once per minute of its age, not per request.

The memo rests on one claim: inside one pair of cells of :func:`proxy.render.age_cells`, Django's ``timesince``
(our port of it, which tests/test_timesince.py checks against Django) says the same words. Checked here on the same
moments and offsets as those tests, at both ends of each cell and in between.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import given, note
from hypothesis import strategies as st

from proxy.cache import CachedAnnotation
from proxy.created_ago import find_created_ago, timesince
from proxy.freshness import entity_tag
from proxy.models import epoch_micros, from_epoch_micros
from proxy.render import MINUTE_US, RECORD_OVERHEAD, SECOND_US, LiveBodies, age_cells, render_body
from tests.support.moments import FAR_FUTURE, FAR_PAST, MOMENTS, OFFSETS, PROPERTY, shifted
from tests.support.samples import encode, sample

MiB = 1024 * 1024
EARLIEST, LATEST = epoch_micros(FAR_PAST), epoch_micros(FAR_FUTURE)


def cell_bounds(then_us: int, now_us: int) -> tuple[int, int]:
    """``[lo, hi)``: the moments (microseconds) that share ``now_us``'s cells."""
    first, second, third = age_cells(then_us, now_us)
    whole_second = then_us - then_us % SECOND_US
    lo = max(then_us + first * MINUTE_US, whole_second + second * MINUTE_US, third * MINUTE_US)
    hi = min(then_us + (first + 1) * MINUTE_US, whole_second + (second + 1) * MINUTE_US, (third + 1) * MINUTE_US)
    return lo, hi


@PROPERTY
@given(then=MOMENTS, offset=OFFSETS, data=st.data())
def test_the_words_do_not_change_inside_a_cell(then: datetime, offset: object, data: st.DataObject) -> None:
    now = shifted(then, offset)  # type: ignore[arg-type]
    then_us, now_us = epoch_micros(then), epoch_micros(now)
    lo, hi = cell_bounds(then_us, now_us)
    assert lo <= now_us < hi
    lo, hi = max(lo, EARLIEST), min(hi, LATEST + 1)  # where datetime ends
    other = data.draw(st.sampled_from([lo, hi - 1]) | st.integers(lo, hi - 1))
    note(f"then={then!r} now={now!r} other={from_epoch_micros(other)!r}")
    assert timesince(then, from_epoch_micros(other)) == timesince(then, now)


def entry_for(created_at: str, **fields: object) -> CachedAnnotation:
    body = encode(sample(created_at=created_at, **fields))
    span = find_created_ago(body)
    return CachedAnnotation(
        annotation_id=1,
        version=1,
        stored_at=0.0,
        body=body,
        etag=entity_tag(body, span),
        created_at=epoch_micros(datetime.fromisoformat(created_at)),
        created_ago_span=span,
    )


def test_a_month_counted_at_midnight_is_a_cell_edge() -> None:
    # Found by the property above: created on 29 December, a month more is counted when 28 February turns into
    # 1 March at midnight, which is on neither grid that counts from created_at.
    then = datetime.fromisoformat("0001-12-29T00:00:59+00:00")
    before, after = (datetime.fromisoformat(f"0002-{moment}+00:00") for moment in ("02-28T23:59:59", "03-01T00:00:01"))
    assert (timesince(then, before), timesince(then, after)) == ("1\u00a0month, 4\u00a0weeks", "2\u00a0months")
    assert age_cells(epoch_micros(then), epoch_micros(before)) != age_cells(epoch_micros(then), epoch_micros(after))


def test_a_memoized_body_is_the_body_rendered_afresh_across_minutes() -> None:
    entry = entry_for("2026-11-28T12:00:00.700000Z")
    bodies = LiveBodies(MiB)
    start = entry.created_at
    assert start is not None
    for seconds in (0, 59, 60, 61, 119, 3_600, 86_400 * 40 + 0.5, 86_400 * 40 + 0.8):
        now_us = start + int(seconds * SECOND_US)
        assert bodies.body(entry, now_us) == render_body(entry, now_us)
    assert b'"created_ago":"1\xc2\xa0month, 1\xc2\xa0week"' in bodies.body(entry, start + 86_400 * 40 * SECOND_US)


def test_one_render_per_cell_and_the_memo_is_bounded_in_bytes() -> None:
    entry = entry_for("2026-11-28T12:00:00Z")
    size = len(render_body(entry, 0)) + RECORD_OVERHEAD
    bodies = LiveBodies(max_bytes=size * 12)  # room for 12 bodies; each may take a quarter
    start = entry.created_at
    assert start is not None
    first = bodies.body(entry, start + 61 * SECOND_US)
    assert bodies.body(entry, start + 119 * SECOND_US) is first  # the same bytes object: not rendered again
    for minute in range(2, 40):
        bodies.body(entry, start + minute * MINUTE_US)
    assert bodies.size_bytes <= bodies.max_bytes
    assert len(bodies) >= 11


def test_large_bodies_cannot_push_the_memo_past_its_bound() -> None:
    """40 distinct 5 MB annotations once took the proxy from 100 to 570 MiB: the memo counted bodies, not bytes."""
    bodies = LiveBodies(max_bytes=16 * MiB)
    result = [{"id": f"r{i}", "value": {"text": "x" * 1000}} for i in range(5000)]  # about 5 MB
    for annotation_id in range(1, 41):
        entry = entry_for("2026-11-28T12:00:00Z", id=annotation_id, result=result)
        assert entry.created_at is not None
        served = bodies.body(entry, entry.created_at + 61 * SECOND_US)
        assert served == render_body(entry, entry.created_at + 61 * SECOND_US)
        assert bodies.size_bytes <= 16 * MiB
    assert len(bodies) <= 3


def test_a_body_without_created_ago_is_served_as_stored() -> None:
    entry = CachedAnnotation(annotation_id=1, version=1, stored_at=0.0, body=b'{"id":1}')
    assert LiveBodies(MiB).body(entry, 10**15) is entry.body

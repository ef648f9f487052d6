"""Hypothesis strategies for moments and offsets (years 1 to 9999, calendar edges, units ticking over), and the
settings of the ``created_ago`` properties (test_timesince, test_render)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# No example database: nothing written into the working tree, and every run draws afresh.
PROPERTY = settings(max_examples=5000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
JSON_PROPERTY = settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
ANY_MOMENT = st.datetimes(
    min_value=FAR_PAST.replace(tzinfo=None), max_value=FAR_FUTURE.replace(tzinfo=None), timezones=st.just(UTC)
)
EDGE_TIMES = [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 59, 999999), (12, 0, 0, 0), (23, 59, 59, 0), (23, 59, 59, 999999)]
EDGE_YEARS = st.one_of(
    st.sampled_from([1, 4, 100, 1900, 1970, 1999, 2000, 2023, 2024, 2025, 2026, 2027, 2028, 2100, 9998, 9999]),
    st.integers(min_value=1, max_value=9999),
)


@st.composite
def calendar_edges(draw: st.DrawFn) -> datetime:
    """Moments around the edges the calendar arithmetic cares about: month ends, leap days, year ends, midnight."""
    year = draw(EDGE_YEARS)
    month = draw(st.sampled_from([1, 2, 3, 11, 12]) | st.integers(min_value=1, max_value=12))
    last = calendar.monthrange(year, month)[1]
    day = draw(st.sampled_from(sorted({1, 28, min(29, last), min(30, last), last})) | st.integers(1, last))
    hour, minute, second, micro = draw(
        st.sampled_from(EDGE_TIMES)
        | st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999999))
    )
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


MOMENTS = ANY_MOMENT | calendar_edges()

OFFSETS = st.one_of(
    st.timedeltas(min_value=timedelta(microseconds=-2_000_000), max_value=timedelta(microseconds=2_000_000)),
    st.timedeltas(min_value=timedelta(seconds=-120), max_value=timedelta(seconds=120)),
    st.timedeltas(min_value=timedelta(days=-1), max_value=timedelta(days=60)),
    st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=4000)),
    st.builds(  # whole units, plus or minus a little: where a count ticks over
        lambda n, unit, nudge: n * unit + nudge,
        st.integers(0, 60),
        st.sampled_from([timedelta(minutes=1), timedelta(hours=1), timedelta(days=1), timedelta(weeks=1)]),
        st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(microseconds=-1), timedelta(seconds=-1)]),
    ),
)


def shifted(moment: datetime, offset: timedelta) -> datetime:
    try:
        return moment + offset
    except OverflowError:
        return moment - offset

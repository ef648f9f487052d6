"""``proxy.created_ago``: Label Studio's ``created_ago`` wording, checked against Django's own ``timesince``, and
the splice that puts a live one into a cached body."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.created_ago import encode_created_ago, find_created_ago, timesince, with_created_ago
from tests.support import django_oracle
from tests.support.moments import JSON_PROPERTY, MOMENTS, OFFSETS, PROPERTY, shifted
from tests.support.samples import SAMPLE_BODY, sample

NBSP = "\u00a0"
KEY = "created_ago"


def words(text: str) -> str:
    """A BEHAVIOUR.md example as Label Studio writes it: U+00A0 inside each unit, ", " between units."""
    return text.replace(" ", NBSP).replace("," + NBSP, ", ")


# --- Strategies: (created_at, now) pairs (moments and offsets: tests/support/moments.py) -----------------------


@st.composite
def same_wall_time_later(draw: st.DrawFn, then: datetime) -> datetime:
    """``then``'s day and time some months or years on (day clamped): where the month count and the pivot turn."""
    months = draw(st.integers(min_value=-2, max_value=130))
    index = then.year * 12 + then.month - 1 + months
    year, month = divmod(index, 12)
    year = min(max(year, 1), 9999)
    last = calendar.monthrange(year, month + 1)[1]
    moment = then.replace(year=year, month=month + 1, day=min(then.day, last))
    return shifted(moment, draw(st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(microseconds=-1)])))


@st.composite
def created_and_now(draw: st.DrawFn) -> tuple[datetime, datetime]:
    then = draw(MOMENTS)
    now = draw(
        st.one_of(
            MOMENTS,  # independent: far pasts, far futures, now before created_at
            st.just(then),  # the same instant
            OFFSETS.map(lambda offset: shifted(then, offset)),
            same_wall_time_later(then),
        )
    )
    return then, now


# --- timesince against Django ------------------------------------------------------------------------------------


@PROPERTY
@given(created_and_now())
def test_timesince_is_djangos(pair: tuple[datetime, datetime]) -> None:
    then, now = pair

    assert timesince(then, now) == django_oracle.timesince(then, now)


OFFSET_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))])


@settings(max_examples=1000, deadline=None, database=None)
@given(created_and_now(), OFFSET_ZONES, OFFSET_ZONES)
def test_timesince_is_djangos_in_other_zones_too(
    pair: tuple[datetime, datetime], then_zone: timezone, now_zone: timezone
) -> None:
    """Django counts calendar months in ``then``'s zone (it moves ``now`` there); so does the proxy."""
    try:
        then, now = pair[0].astimezone(then_zone), pair[1].astimezone(now_zone)
    except OverflowError:
        return
    try:
        expected = django_oracle.timesince(then, now)
    except OverflowError:  # moving now into then's zone leaves the datetime range: both must refuse
        with pytest.raises(OverflowError):
            timesince(then, now)
        return

    assert timesince(then, now) == expected


@pytest.mark.parametrize(
    ("then", "now", "expected"),
    [
        # BEHAVIOUR.md's examples.
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "0 minutes"),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:59.999999Z", "0 minutes"),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "1 minute"),
        ("2026-01-01T00:00:00Z", "2026-01-01T01:05:00Z", "1 hour, 5 minutes"),
        ("2026-01-01T00:00:00Z", "2026-01-02T03:00:00Z", "1 day, 3 hours"),
        ("2026-01-01T00:00:00Z", "2026-01-17T00:00:00Z", "2 weeks, 2 days"),
        ("2025-01-01T00:00:00Z", "2026-02-02T00:00:00Z", "1 year, 1 month"),
        # In the future: 0 minutes, not a negative count.
        ("2026-01-01T00:00:00Z", "2025-12-31T00:00:00Z", "0 minutes"),
        # Only adjacent units: a zero unit ends the list.
        ("2026-01-01T00:00:00Z", "2026-01-15T03:00:00Z", "2 weeks"),
        ("2026-01-31T00:00:00Z", "2026-03-01T00:00:00Z", "1 month"),
        ("2026-01-31T00:00:00Z", "2026-03-10T00:00:00Z", "1 month, 1 week"),
        ("2025-01-01T00:00:00Z", "2026-01-01T23:59:00Z", "1 year"),
        ("2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z", "2 hours"),
        # The pivot clamps to Django's fixed month lengths: February has 28 days even in a leap year.
        ("2024-01-29T00:00:00Z", "2024-03-06T00:00:00Z", "1 month, 1 week"),  # pivot Feb 28, not 29
        ("2024-02-29T00:00:00Z", "2028-02-29T00:00:00Z", "4 years"),
        ("2024-02-29T00:00:00Z", "2025-02-28T00:00:00Z", "11 months, 4 weeks"),
        # Microseconds count when comparing days' times for the month count, not elsewhere.
        ("2026-01-01T00:00:00.5Z", "2026-02-01T00:00:00.2Z", "4 weeks, 2 days"),
        ("2026-01-01T00:00:00.2Z", "2026-02-01T00:00:00.5Z", "1 month"),
        ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "9998 years, 11 months"),
    ],
)
def test_timesince_words(then: str, now: str, expected: str) -> None:
    then_at, now_at = datetime.fromisoformat(then), datetime.fromisoformat(now)

    assert timesince(then_at, now_at) == words(expected)
    assert django_oracle.timesince(then_at, now_at) == words(expected)


def test_units_are_joined_with_a_plain_space_after_the_comma() -> None:
    text = timesince(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, 5, tzinfo=UTC))

    assert text == "1\u00a0hour, 5\u00a0minutes"
    assert encode_created_ago(text) == b'"1\xc2\xa0hour, 5\xc2\xa0minutes"'


# --- Finding and replacing created_ago in a body -----------------------------------------------------------------


def span_text(body: bytes, span: tuple[int, int] | None) -> Any:
    assert span is not None
    return json.loads(body[span[0] : span[1]])


def test_finds_created_ago_in_label_studios_body() -> None:
    span = find_created_ago(SAMPLE_BODY)

    assert span is not None
    assert SAMPLE_BODY[span[0] : span[1]] == b'"0\xc2\xa0minutes"'
    live = with_created_ago(SAMPLE_BODY, span, words("1 hour, 5 minutes"))
    assert live == SAMPLE_BODY.replace(b'"0\xc2\xa0minutes"', b'"1\xc2\xa0hour, 5\xc2\xa0minutes"')
    assert json.loads(live) == sample(created_ago=words("1 hour, 5 minutes"))


def test_a_nested_created_ago_is_not_the_top_level_one() -> None:
    body = (
        b'{"id":1,"result":[{"value":{"created_ago":"decoy","x":{"created_ago":"deeper"}}}],'
        b'"meta":{"created_ago":"decoy too"},"created_ago":"2\xc2\xa0days","task":1}'
    )

    assert span_text(body, find_created_ago(body)) == "2\u00a0days"


def test_created_ago_text_inside_strings_is_not_a_key() -> None:
    body = json.dumps(
        {
            "note": '"created_ago":"decoy"',
            "created_ago_not": "created_ago",
            "tricky": '\\"created_ago\\":\\"decoy',
            "list": ['{"created_ago":"decoy"}', "created_ago"],
            KEY: "real",
            "after": '","created_ago":"decoy after',
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()

    assert span_text(body, find_created_ago(body)) == "real"


def test_a_key_written_with_escapes_is_still_created_ago() -> None:
    body = b'{"id":1,"created\\u005fago":"1\xc2\xa0minute","x":"created_ago"}'

    assert span_text(body, find_created_ago(body)) == "1\u00a0minute"
    assert json.loads(body)[KEY] == "1\u00a0minute"
    duplicated = b'{"created_ago":"first","created\\u005fago":"last"}'  # the last wins, escapes and all
    for parsed in (False, True):
        assert span_text(body, find_created_ago(body, parsed=parsed)) == "1\u00a0minute"
        assert span_text(duplicated, find_created_ago(duplicated, parsed=parsed)) == "last"


@pytest.mark.parametrize("indent", [None, 0, 2, "\t"])
def test_whitespace_between_tokens_is_tolerated(indent: int | str | None) -> None:
    body = json.dumps(sample(), ensure_ascii=False, indent=indent).encode()
    separators = ("\r\n,  ", " \t:\n ")
    spaced = (
        b" \r\n\t" + json.dumps(sample(), ensure_ascii=False, indent=indent, separators=separators).encode() + b"\n"
    )

    for each in (body, spaced):
        span = find_created_ago(each)
        assert span_text(each, span) == "0\u00a0minutes"
        assert json.loads(with_created_ago(each, span, "5\u00a0minutes"))[KEY] == "5\u00a0minutes"


def test_offsets_are_bytes_after_non_ascii_text() -> None:
    body = sample(
        result=[{"value": {"text": ["naïve 日本語 😀 \u2028 ñ"]}}],
        created_username="Zoë Ångström zoe@example.com, 2",
    )
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(raw) > len(raw.decode())  # multi-byte characters before the key

    span = find_created_ago(raw)

    assert span is not None
    assert raw[span[0] : span[1]] == b'"0\xc2\xa0minutes"'
    live = with_created_ago(raw, span, "3\u00a0weeks, 1\u00a0day")
    assert json.loads(live) == {**body, KEY: "3\u00a0weeks, 1\u00a0day"}


def test_a_non_ascii_created_ago_is_spanned_in_bytes_too() -> None:
    body = '{"a":"ü","created_ago":"1 ü 😀","b":"é"}'.encode()

    span = find_created_ago(body)

    assert span is not None
    assert body[span[0] : span[1]] == '"1 ü 😀"'.encode()
    assert body[span[1] :] == ',"b":"é"}'.encode()


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":1,"result":[{"created_ago":"nested only"}],"created_username":"created_ago"}',
        b"{}",
        b" { } ",
        b'{"created_ago":null}',
        b'{"created_ago":5}',
        b'{"created_ago":["0 minutes"]}',
        b'{"created_ago":{"created_ago":"0 minutes"}}',
        b'{"created_ago":true}',
        b'{"created_ago":"first","created_ago":null}',  # json.loads keeps the last
        b'["created_ago","0 minutes"]',
        b'"created_ago"',
        b"",
        b"   ",
        b'{"created_ago":"0 minutes"',  # truncated
        b'{"created_ago":"0 minutes"}x',  # trailing garbage
        b'{"created_ago":"0 minutes",}',
        b'{"created_ago" "0 minutes"}',
        b'{created_ago:"0 minutes"}',
        b'{"created_ago":"0 minutes\n"}',  # control character: invalid in strict JSON
        b'{"created_ago":"0 minutes","x":\xff}',  # not UTF-8
        b'\xef\xbb\xbf{"created_ago":"0 minutes"}',  # a BOM is not JSON
    ],
)
def test_no_top_level_created_ago_string_gives_none(body: bytes) -> None:
    span = find_created_ago(body)

    assert span is None
    assert with_created_ago(body, span, "1\u00a0minute") is body


def test_a_duplicated_key_resolves_to_the_last_like_json_loads() -> None:
    body = b'{"created_ago":null,"x":1,"created_ago":"last"}'

    assert span_text(body, find_created_ago(body)) == json.loads(body)[KEY] == "last"


def test_encoding_is_drfs_raw_utf8() -> None:
    assert encode_created_ago("0\u00a0minutes") == b'"0\xc2\xa0minutes"'
    assert encode_created_ago('a"b\\c\n\u2028\u2029') == b'"a\\"b\\\\c\\n\\u2028\\u2029"'


# --- Property: splicing keeps everything else byte for byte ------------------------------------------------------

OTHER_KEYS = st.one_of(st.text(max_size=8), st.just("created_ago "), st.just("Created_ago"))
KEYS = OTHER_KEYS | st.just(KEY)
STRINGS = st.one_of(st.text(), st.just(KEY), st.just('"created_ago":"'), st.just('","created_ago":"x'))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | STRINGS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)
DUMPS_STYLES = st.sampled_from(
    [
        {"ensure_ascii": False, "separators": (",", ":")},  # Label Studio's
        {"ensure_ascii": True, "separators": (",", ":")},
        {"ensure_ascii": False},
        {"ensure_ascii": False, "indent": 2},
        {"ensure_ascii": True, "indent": "\t", "separators": (" ,", " : ")},
    ]
)


@st.composite
def bodies_with_created_ago(draw: st.DrawFn) -> tuple[list[tuple[str, Any]], str]:
    """Top-level items (created_ago among them, at a random position) and the created_ago value."""
    others = draw(st.dictionaries(OTHER_KEYS, JSON_VALUES, max_size=6))
    value = draw(STRINGS)
    items = list(others.items())
    items.insert(draw(st.integers(min_value=0, max_value=len(items))), (KEY, value))
    return items, value


@JSON_PROPERTY
@given(bodies_with_created_ago(), DUMPS_STYLES, STRINGS)
def test_splicing_a_new_created_ago_changes_only_its_span(
    generated: tuple[list[tuple[str, Any]], str], style: dict[str, Any], new_value: str
) -> None:
    items, old_value = generated
    body = json.dumps(dict(items), **style).encode()

    span = find_created_ago(body)

    assert span is not None
    start, end = span
    assert json.loads(body[start:end]) == old_value
    spliced = with_created_ago(body, span, new_value)
    expected = [(key, new_value if key == KEY else value) for key, value in items]
    assert list(json.loads(spliced).items()) == expected
    replacement = encode_created_ago(new_value)
    assert spliced[:start] == body[:start]
    assert spliced[start : start + len(replacement)] == replacement
    assert spliced[start + len(replacement) :] == body[end:]


@JSON_PROPERTY
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=6), DUMPS_STYLES)
def test_found_exactly_when_json_loads_has_a_top_level_string(document: dict[str, Any], style: dict[str, Any]) -> None:
    body = json.dumps(document, **style).encode()

    span = find_created_ago(body)

    if isinstance(document.get(KEY), str):
        assert span_text(body, span) == document[KEY]
    else:
        assert span is None


# --- The quick search (find_created_ago(parsed=True)) answers as the walk does ------------------------------------

_DECOY_TEXT = st.sampled_from(
    ["created_ago", '"created_ago"', '"created_ago":"x"', '\\"created_ago\\":', "{[", "]}", "ü 😀", "\u2028", "\\u005f"]
)
_SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (",\n ", " :\t")])
_KEYS = st.sampled_from([KEY, "created_ago ", "Created_ago", "result", "id", "x", '"created_ago"'])
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | _DECOY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@JSON_PROPERTY
@given(
    st.dictionaries(_KEYS, _JSON_VALUES, max_size=6),
    _SEPARATORS,
    st.booleans(),
)
def test_the_quick_search_finds_what_the_walk_finds(
    document: dict[str, object], separators: tuple[str, str], ascii_only: bool
) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only, separators=separators).encode()

    assert find_created_ago(body, parsed=True) == find_created_ago(body)


@JSON_PROPERTY
@given(
    st.dictionaries(_KEYS, _JSON_VALUES, max_size=6),
    st.text(max_size=8) | _DECOY_TEXT,
    _SEPARATORS,
    st.booleans(),
)
def test_the_quick_search_told_the_key_is_there_finds_what_the_walk_finds(
    document: dict[str, object], created_ago: str, separators: tuple[str, str], ascii_only: bool
) -> None:
    """What proxy/entries.py asks, once pydantic has found a top-level created_ago string: decoys nested or in
    strings before it, after it, or inside its own value answer as the walk does."""
    document[KEY] = created_ago
    body = json.dumps(document, ensure_ascii=ascii_only, separators=separators).encode()

    assert find_created_ago(body, known=True) == find_created_ago(body)


def test_the_quick_search_finds_label_studios_created_ago() -> None:
    assert find_created_ago(SAMPLE_BODY, parsed=True) == find_created_ago(SAMPLE_BODY) is not None
    assert find_created_ago(SAMPLE_BODY, known=True) == find_created_ago(SAMPLE_BODY)

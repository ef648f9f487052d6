"""The request's Cache-Control read as RFC 9111 says (proxy/directives.py); what the proxy then does, and
Accept-Encoding, are tested over sockets in tests/test_http_caching.py."""

from __future__ import annotations

import math

import pytest

from proxy.directives import ORDINARY, RequestDirectives, parse, without_forcing


@pytest.mark.parametrize(
    ("cache_control", "pragma", "expected"),
    [
        ([], [], ORDINARY),
        (["public, s-maxage=60"], [], ORDINARY),  # nothing a request means
        ([], ["no-cache"], RequestDirectives(no_cache=True)),
        (["max-age=60"], ["no-cache"], RequestDirectives(max_age=60)),  # Pragma only without Cache-Control
        (["max-age=60, max-age=0"], [], RequestDirectives(max_age=60)),  # the first of a repeated one
        (['max-age="30"'], [], RequestDirectives(max_age=30)),
        (["max-age=-5"], [], RequestDirectives(max_age=0)),  # malformed: the safe reading
        (["max-age=\u00b2"], [], RequestDirectives(max_age=0)),  # a digit to str.isdigit, not to HTTP (ASCII only)
        (["min-fresh=\u0663"], [], RequestDirectives(min_fresh=0)),
        (["max-stale"], [], RequestDirectives(max_stale=math.inf)),
        (["max-stale=120", "min-fresh=10"], [], RequestDirectives(max_stale=120, min_fresh=10)),  # two lines
        (["NO-STORE, Only-If-Cached"], [], RequestDirectives(no_store=True, only_if_cached=True)),
        # A comma inside a quoted value ends nothing (RFC 9110 5.6.4): an unknown directive, not max-age=0.
        (['ext="x, max-age=0"'], [], ORDINARY),
        (['ext="a,\\"b, no-cache", max-age=5'], [], RequestDirectives(max_age=5)),  # an escaped quote inside
        (['max-age="7", other="1,2"', "no-store"], [], RequestDirectives(no_store=True, max_age=7)),
    ],
)
def test_parse(cache_control: list[str], pragma: list[str], expected: RequestDirectives) -> None:
    assert parse(",".join(cache_control), ",".join(pragma)) == expected  # lines joined, as routes.py does


def test_ages() -> None:
    assert RequestDirectives(max_age=100).accepts(99.5, ttl=300)
    assert RequestDirectives(max_age=100).accepts(100.9, ttl=300)  # its Age header says 100
    assert not RequestDirectives(max_age=100).accepts(101.0, ttl=300)
    assert not RequestDirectives(max_age=0).accepts(0.0, ttl=300)  # max-age=0 means revalidate
    assert RequestDirectives(min_fresh=100).accepts(150, ttl=300)
    assert not RequestDirectives(min_fresh=200).accepts(150, ttl=300)
    assert RequestDirectives(max_age=5).accepts(None, ttl=300)  # a remembered 404: age unknown
    assert not RequestDirectives(no_cache=True).accepts(None, ttl=300)


def test_stale() -> None:
    assert ORDINARY.accepts_stale(100, window=3600)
    assert not ORDINARY.accepts_stale(3600, window=3600)
    assert not RequestDirectives(max_stale=50).accepts_stale(100, window=3600)
    assert RequestDirectives(max_stale=math.inf).accepts_stale(10**9, window=3600)
    # max-age without max-stale: "the client does not wish to receive a stale response" (RFC 9111 5.2.1.1)
    assert not RequestDirectives(max_age=86400).accepts_stale(1, window=3600)
    assert RequestDirectives(max_age=86400, max_stale=500).accepts_stale(100, window=3600)


def test_without_forcing_keeps_what_never_asks_label_studio() -> None:
    every = RequestDirectives(True, True, True, max_age=0, min_fresh=5, max_stale=10)
    assert without_forcing(every, stale_window=3600) == RequestDirectives(no_store=True, only_if_cached=True)
    wider = RequestDirectives(max_stale=7200, no_cache=True)
    assert without_forcing(wider, stale_window=3600) == RequestDirectives(max_stale=7200)

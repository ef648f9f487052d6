"""proxy/answers.py: a hot hit's answer, serialized once, is the answer built afresh at every instant it is used,
never outlives a version, and is bounded in bytes."""

from __future__ import annotations

import gc
import json
import tracemalloc
from email.utils import formatdate

import pytest

from proxy.answers import Answer, Answers
from proxy.cache import CachedAnnotation
from proxy.routes import AnnotationRoute, Served
from tests.support import raw_http
from tests.support.clock import START, Clock
from tests.support.proxies import CLIENT_KEY, Proxy, ProxyFactory
from tests.support.raw_http import framed, request_line

AUTH = f"Authorization: Token {CLIENT_KEY}"
VARYING = {b"X-Request-ID", b"Connection"}  # per request, and the closing answer's own
CREATED = START + 0.123456  # created_ago's first grid: created_at + k minutes, off the whole seconds
STORED = START + 5.37  # Age and Date change on other instants than ...
TTL = 300.5  # ... Cache-Status's ttl=, which counts down from stored_at + 300.5


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> list[Answer]:
    """Every answer the annotation route serializes, as it serializes it."""
    built: list[Answer] = []
    keep_answer = AnnotationRoute.keep_answer

    def counted(
        self: AnnotationRoute, served: Served, entry: CachedAnnotation, coding: str | None, now: float
    ) -> Answer:
        built.append(keep_answer(self, served, entry, coding, now))
        return built[-1]

    monkeypatch.setattr(AnnotationRoute, "keep_answer", counted)
    return built


async def three_answers(proxy: Proxy, *more: str) -> list[tuple[bytes, list[tuple[bytes, bytes]], bytes]]:
    """The same hit asked three times on one connection: twice kept alive (written directly, from a kept answer
    once there is one), then with ``Connection: close`` (aiohttp's own Response, its headers built afresh)."""
    path = "/api/annotations/1/"
    raw = request_line(path, AUTH, *more) * 2 + request_line(path, AUTH, *more, "Connection: close")
    return framed(await raw_http.exchange(proxy.client.host, proxy.client.port, raw))


def instants() -> list[float]:
    """Either side of every instant where some byte of the answer changes: whole seconds (Date), seconds of age
    (Age), seconds of remaining freshness (ttl=) and created_ago's minutes."""
    changes = [
        *(START + s for s in (6, 7, 60, 61, 120)),
        *(STORED + s for s in (1, 2, 55, 56)),
        *(STORED + TTL - r for r in (299, 298)),
        *(CREATED + 60 * m for m in (1, 2)),
    ]
    return sorted(t + d for t in changes for d in (-2e-6, 1e-6))


async def test_a_kept_answer_is_the_answer_built_afresh_at_every_instant(
    make_proxy: ProxyFactory, clock: Clock, kept: list[Answer]
) -> None:
    clock.now = CREATED
    proxy = await make_proxy(proxy_cache_ttl=TTL, proxy_hot_ttl=300.0)
    proxy.fake.add_annotation()
    clock.now = STORED
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200  # stored now
    bodies = set()
    for instant in instants():
        clock.now = instant
        built = len(kept)
        answers = await three_answers(proxy)
        assert len(kept) <= built + 1  # the second answer at least came from the first's
        first, second, fresh = (
            (status, [h for h in lines if h[0] not in VARYING], body) for status, lines, body in answers
        )
        assert first == second
        assert first[0] == fresh[0] == b"HTTP/1.1 200 OK"
        dates = [dict(lines).pop(b"Date") for _, lines, _ in (first, fresh)]
        assert dates[0] == formatdate(int(instant), usegmt=True).encode()
        assert [h for h in first[1] if h[0] != b"Date"] == [h for h in fresh[1] if h[0] != b"Date"], instant
        assert first[2] == fresh[2]
        bodies.add(json.loads(first[2])["created_ago"])
    assert len(kept) < len(instants())  # kept answers were used, not built for every request
    assert len(bodies) == 3  # created_ago moved on twice: 0, 1 and 2 minutes


async def test_a_new_version_is_never_answered_with_the_one_before(
    make_proxy: ProxyFactory, clock: Clock, kept: list[Answer]
) -> None:
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    before = await three_answers(proxy)
    assert kept  # the version's answer is kept
    proxy.fake.update_annotation(1, lead_time=99.0)
    # The caller's own revalidation fetches the new version (the clock has not moved: the same second).
    assert (await three_answers(proxy, "Cache-Control: no-cache"))[0][0] == b"HTTP/1.1 200 OK"
    after = await three_answers(proxy)
    assert {json.loads(body)["lead_time"] for _, _, body in before} == {3.5}
    assert {json.loads(body)["lead_time"] for _, _, body in after} == {99.0}
    assert len({dict(lines)[b"Etag"] for _, lines, _ in before + after}) == 2


async def test_a_clock_stepped_back_finds_no_answer_built_later(
    make_proxy: ProxyFactory, clock: Clock, kept: list[Answer]
) -> None:
    """An answer built at +70.5 s (Age 70) is not the answer at +3.2 s, should the wall clock be stepped back."""
    proxy = await make_proxy(proxy_hot_ttl=300.0)
    proxy.fake.add_annotation()
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    clock.now = START + 70.5
    later = await three_answers(proxy)
    clock.now = START + 3.2
    earlier = await three_answers(proxy)
    assert [dict(lines)[b"Age"] for _, lines, _ in later + earlier] == [b"70"] * 3 + [b"3"] * 3


async def test_hits_read_from_the_store_keep_no_answer(make_proxy: ProxyFactory, kept: list[Answer]) -> None:
    """Without the hot tier every hit is a new read of the store, whose answer would never be asked again."""
    proxy = await make_proxy(proxy_hot_ttl=0.0)
    proxy.fake.add_annotation()
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    assert all(b"hit" in dict(lines)[b"Cache-Status"] for _, lines, _ in await three_answers(proxy))
    assert kept == []


def answer_for(annotation_id: int, size: int) -> Answer:
    """An answer of ``size`` bytes of gzipped body, for an entry five times as large."""
    entry = CachedAnnotation(annotation_id, 1, START, bytes(5 * size), etag=f'W/"{annotation_id}"')
    return Answer(entry, START, START + 1, (b"a" * 100, b"b" * 100), bytes(size))


def test_the_kept_answers_are_bounded_in_bytes_their_entries_included() -> None:
    """Each answer keeps its entry alive, after the hot tier and the store have let it go: the bound counts it."""
    max_bytes = 1024 * 1024
    answers = Answers(max_bytes)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for annotation_id in range(1, 401):  # 400 x (17 KB + 85 KB): 40 MB, were every answer kept
            answer = answer_for(annotation_id, 17_000)
            answers.keep(answer, "gzip")
            assert answers.get(answer.entry, "gzip", START) is answer  # the newest is kept
        del answer
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert answers.size_bytes <= max_bytes
    assert held <= max_bytes * 1.1
    assert 5 <= len(answers) <= 10


def test_one_large_answer_pushes_no_other_out() -> None:
    answers = Answers(max_bytes=40_000)  # room for the five small ones (6.6 KB each), not for the large one too
    small = [answer_for(annotation_id, 1_000) for annotation_id in range(1, 6)]
    for answer in small:
        answers.keep(answer, None)
    answers.keep(answer_for(99, 5_000), None)  # 30 KB with its entry: over a quarter of the bound
    assert [answers.get(answer.entry, None, START) for answer in small] == small
    assert len(answers) == len(small)
    assert answers.get(small[0].entry, None, START + 1) is None  # past its instant: not used


async def test_the_same_version_fetched_again_is_answered_with_its_own_age(
    make_proxy: ProxyFactory, clock: Clock, kept: list[Answer]
) -> None:
    """Same bytes, same tag, another fetch: the answer kept for the first fetch (2 s old, still good for this
    second) is not the second's, which is 0 s old."""
    proxy = await make_proxy()
    proxy.fake.add_annotation()
    clock.now = START + 0.5
    assert (await proxy.client.get("/api/annotations/1/", headers=proxy.auth())).status == 200
    clock.now = START + 2.6
    first = await three_answers(proxy)
    assert kept
    clock.now = START + 2.7
    await three_answers(proxy, "Cache-Control: no-cache")  # fetched again: Label Studio sends the same
    clock.now = START + 2.8
    again = await three_answers(proxy)
    assert [dict(lines)[b"Age"] for _, lines, _ in first + again] == [b"2"] * 3 + [b"0"] * 3
    assert {dict(lines)[b"Etag"] for _, lines, _ in first + again} == {dict(first[0][1])[b"Etag"]}

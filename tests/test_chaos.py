"""Chaos: the proxy as a real process, a redis-server killed (or frozen) and back under load, and a Label Studio
that fails in every way we know of: 500s, error pages, hanging, dripping bytes, connections closed mid-body,
garbage, not listening at all.

What must hold across all of it (issue 4, item 5):

- **no wrong body**: every 200 is, apart from ``created_ago``, a body Label Studio actually served for that id;
- **no 5xx while a valid stale copy exists** when Label Studio *fails* (stale-if-error); an *invalid* body is an
  answer, not a failure, and is never hidden (docs/api.md, Responses: 502), nor ever served;
- **the proxy recovers on its own**: caching resumes when Redis returns, the upstream circuit closes after its
  cooldown, and the process still shuts down cleanly.

Real time runs here (the proxy is another process, its circuit breakers cool down for 5 real seconds), so every
wait is a condition polled with a deadline, never a timing assertion. The figures are printed (``pytest -s``) and
attached to the test report (``record_property``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import hdrs, web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.app import CACHE_BREAKER_COOLDOWN, UPSTREAM_BREAKER_COOLDOWN
from tests.fakes.label_studio import LS_VERSION, FakeLabelStudio, drf_json
from tests.support.load import PhaseStats, SteadyLoad, comparable, six_annotations
from tests.support.processes import FETCHED, REFETCHED, STALE_IF_ERROR, Answer, ProxyProcess, proxy_process
from tests.support.proxies import ServerFactory
from tests.support.redis_servers import running_redis
from tests.support.waiting import poll_until

UPSTREAM_TIMEOUT = 1.0  # PROXY_UPSTREAM_TIMEOUT of the proxies here: a hanging Label Studio costs one second
CACHE_TTL = 0.5  # PROXY_CACHE_TTL, with PROXY_STALE_TTL=0: a cached copy soon needs Label Studio again
HANG = 4 * UPSTREAM_TIMEOUT  # a hanging or dripping answer takes this long: well past the proxy's deadline
DRIP_BYTES = 8  # a dripped body comes this many bytes at a time
RECOVERY_LIMIT = 4 * max(UPSTREAM_BREAKER_COOLDOWN, CACHE_BREAKER_COOLDOWN) + 10  # a deadline, not an expectation
HOT_TTL = 2.0  # PROXY_HOT_TTL for the Redis outage test: short, so that the test is too
FAULT_LIMIT = 30.0
PAUSE = 0.02  # between one worker's requests: bounded load

CIRCUIT = 'annotation_proxy_upstream_circuit_state{state="%s"}'


# --- A Label Studio that misbehaves ------------------------------------------------------------------------------

# Label Studio failing: a cached copy must hide these (stale-if-error), and the circuit opens.
FAILURES = ("500", "503-html", "hang", "drip", "close-mid-body", "not-http", "refused")
# What a request without a cached copy gets from each, before the circuit opens (then: 503).
FIRST_ERROR = {
    "500": (502, "annotation-proxy; fwd=miss; fwd-status=500; detail=bad_status"),
    "503-html": (502, "annotation-proxy; fwd=miss; fwd-status=503; detail=bad_status"),  # after two retries
    "hang": (504, "annotation-proxy; fwd=miss; detail=timeout"),
    "drip": (504, "annotation-proxy; fwd=miss; detail=timeout"),
    "close-mid-body": (502, "annotation-proxy; fwd=miss; detail=connection_error"),
    "not-http": (502, "annotation-proxy; fwd=miss; detail=connection_error"),
    "refused": (502, "annotation-proxy; fwd=miss; detail=connection_error"),  # Label Studio is not listening
}
# Label Studio answering 200 with a body the proxy must refuse: never served, never hidden (docs/api.md: 502).
INVALID_BODIES = ("not-json", "truncated-json", "wrong-types", "another-annotation")


class ChaosLabelStudio:
    """Label Studio as the proxy sees it: the fake's answers passed through, until ``fault`` says otherwise.

    ``served`` holds every valid annotation body the fake served, by id (canonical JSON without ``created_ago``):
    the only bodies the proxy may ever answer 200 with.
    """

    def __init__(self, fake: FakeLabelStudio, fake_url: URL, session: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.fault: str | None = None
        self.served: dict[int, set[str]] = defaultdict(set)
        self.faulty_answers: Counter[str] = Counter()
        self._fake_url = fake_url
        self._session = session
        self._closing = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/annotations/{pk:[0-9]+}/", self._annotation)
        app.on_shutdown.append(self._wake)
        return app

    async def _wake(self, app: web.Application) -> None:
        self._closing.set()

    async def _pause(self, seconds: float) -> bool:
        """Sleep, cut short when the server shuts down (then True)."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        return self._closing.is_set()

    async def _annotation(self, request: web.Request) -> web.StreamResponse:
        pk = int(request.match_info["pk"])
        fault = self.fault
        if fault is None:
            return await self._pass_through(request, pk)
        self.faulty_answers[fault] += 1
        return await getattr(self, "_" + fault.replace("-", "_"))(request, pk)

    async def _pass_through(self, request: web.Request, pk: int) -> web.StreamResponse:
        headers = {name: value for name in (hdrs.AUTHORIZATION, "X-Request-ID") if (value := request.headers.get(name))}
        url = self._fake_url.with_path(request.path).with_query(request.query)
        async with self._session.get(url, headers=headers, allow_redirects=False) as answer:
            body = await answer.read()
            status, content_type = answer.status, answer.headers.get(hdrs.CONTENT_TYPE, "application/json")
        if status == 200 and not request.query and (valid := comparable(body)) is not None:
            self.served[pk].add(valid)
        return web.Response(status=status, body=body, headers={hdrs.CONTENT_TYPE: content_type})

    def _impostor(self, pk: int) -> bytes:
        """A well-formed body for ``pk`` that Label Studio never served: it must never reach a caller."""
        choices = {"choices": ["IMPOSTOR"]}
        result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": choices}]
        return drf_json({**self.fake.annotation(pk), "result": result})

    # Failures

    async def _500(self, request: web.Request, pk: int) -> web.StreamResponse:
        error = {"id": str(uuid.uuid4()), "status_code": 500, "version": LS_VERSION, "detail": "Internal Server Error"}
        return web.Response(status=500, body=drf_json({**error, "exc_info": None}), content_type="application/json")

    async def _503_html(self, request: web.Request, pk: int) -> web.StreamResponse:
        """What a load balancer in front of a Label Studio that is gone sends."""
        page = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
        return web.Response(status=503, text=page, content_type="text/html")

    async def _hang(self, request: web.Request, pk: int) -> web.StreamResponse:
        await self._pause(HANG)
        return web.Response(status=504)  # long after the proxy gave up

    async def _drip(self, request: web.Request, pk: int) -> web.StreamResponse:
        """Headers at once, then the body a few bytes at a time, slower overall than PROXY_UPSTREAM_TIMEOUT."""
        body = self._impostor(pk)
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        pause = HANG / (len(body) / DRIP_BYTES)
        with suppress(ConnectionError):  # the proxy hung up, as it should
            for start in range(0, len(body), DRIP_BYTES):
                await response.write(body[start : start + DRIP_BYTES])
                if await self._pause(pause):
                    break
        return response

    async def _close_mid_body(self, request: web.Request, pk: int) -> web.StreamResponse:
        body = self._impostor(pk)
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()  # after the half written so far
        return response

    async def _not_http(self, request: web.Request, pk: int) -> web.StreamResponse:
        """Garbage where the status line should be: something else listens on Label Studio's port."""
        assert request.transport is not None
        request.transport.write(b"SSH-2.0-OpenSSH_9.2p1\r\n\x00\xff\xfe garbage\r\n\r\n")
        request.transport.close()
        return web.Response()  # never sent: the connection is closed

    # Invalid bodies, each a complete HTTP 200

    async def _not_json(self, request: web.Request, pk: int) -> web.StreamResponse:
        return web.Response(body=b"<!doctype html><title>Label Studio</title>", content_type="application/json")

    async def _truncated_json(self, request: web.Request, pk: int) -> web.StreamResponse:
        body = self._impostor(pk)
        return web.Response(body=body[: len(body) // 2], content_type="application/json")

    async def _wrong_types(self, request: web.Request, pk: int) -> web.StreamResponse:
        wrong = {"id": str(pk), "result": {"not": "a list"}, "was_cancelled": "no", "lead_time": "3.5"}
        return web.Response(body=drf_json({**self.fake.annotation(pk), **wrong}), content_type="application/json")

    async def _another_annotation(self, request: web.Request, pk: int) -> web.StreamResponse:
        """A valid annotation, but not the one asked for."""
        other = next(i for i in range(1, 100) if i != pk)
        return web.Response(body=drf_json(self.fake.annotation(other)), content_type="application/json")


# --- Label Studio failing: stale-if-error, the circuit, recovery ------------------------------------------------

# Five ids: the breaker counts a 500 once per id (one failing annotation must not cut every caller off), so a
# Label Studio that fails on everything opens it once five different ids have failed.
ALL_IDS = (1, 2, 3, 4, 5)
WARM = (1, 2)  # cached before the fault
COLD = (3, 4, 5)  # never asked for before the fault
WORKERS = 3


@dataclass
class FaultRun:
    """What callers saw during one fault and the recovery after it, and everything that broke a rule."""

    fault: str
    chaos: ChaosLabelStudio
    phase: str = "warm-up"
    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    stale_if_error: set[int] = field(default_factory=set)  # ids answered from a stale copy in this phase
    fresh: set[int] = field(default_factory=set)  # ids answered 200 by Label Studio in this phase
    answered: set[int] = field(default_factory=set)
    first_answers: dict[int, Answer | Exception] = field(default_factory=dict)  # in this phase
    durations: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.stale_if_error, self.fresh, self.answered, self.first_answers = set(), set(), set(), {}

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(f"[{self.fault}, {self.phase}] {text}")

    def check(self, annotation_id: int, answer: Answer | Exception) -> None:
        warm = annotation_id in WARM
        kind = "warm" if warm else "cold"
        self.first_answers.setdefault(annotation_id, answer)
        if isinstance(answer, Exception):
            self.counts[self.phase][f"{kind} exception"] += 1
            self.problem(f"id {annotation_id}: the request failed: {answer!r}")
            return
        self.answered.add(annotation_id)
        detail = " stale-if-error" if answer.cache_status == STALE_IF_ERROR else ""
        self.counts[self.phase][f"{kind} {answer.status}{detail}"] += 1
        if answer.status == 200:
            if comparable(answer.body) not in self.chaos.served[annotation_id]:
                self.problem(f"WRONG BODY for id {annotation_id} ({answer.cache_status}): {answer.body[:300]!r}")
            if detail:
                self.stale_if_error.add(annotation_id)
            elif answer.cache_status.startswith((FETCHED, REFETCHED)):
                self.fresh.add(annotation_id)
            return
        if warm:
            self.problem(
                f"id {annotation_id} has a valid stale copy, yet got {answer.status} ({answer.cache_status}): "
                f"{answer.body[:200]!r}"
            )
        elif answer.status not in (502, 503, 504):
            self.problem(f"id {annotation_id}: {answer.status} ({answer.cache_status}), expected 502, 503 or 504")
        if (shape := answer.error_shape_problem()) is not None:
            self.problem(f"id {annotation_id}: {shape}")

    def summary(self) -> str:
        parts = [f"fault={self.fault}: {self.chaos.faulty_answers.total()} faulty answers from Label Studio"]
        for phase, counts in self.counts.items():
            took = f" ({self.durations[phase]:.1f} s)" if phase in self.durations else ""
            parts.append(f"{phase}{took}: " + ", ".join(f"{label} x{n}" for label, n in sorted(counts.items())))
        return "; ".join(parts)


async def drive(
    proxy: ProxyProcess,
    session: aiohttp.ClientSession,
    run: FaultRun,
    done: Callable[[dict[str, float]], bool],
    limit: float,
) -> None:
    """Requests on every id from a few workers, each answer checked, until ``done(metrics)`` (polled) holds."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def worker(offset: int) -> None:
        ids = itertools.cycle(ALL_IDS[offset:] + ALL_IDS[:offset])
        while not stop.is_set():
            annotation_id = next(ids)
            run.check(annotation_id, await proxy.get(session, annotation_id))
            await asyncio.sleep(PAUSE)

    started = loop.time()
    async with asyncio.TaskGroup() as group:
        for offset in range(WORKERS):
            group.create_task(worker(offset))
        try:
            while not done(await proxy.metrics(session)):
                if loop.time() - started > limit:
                    run.problem(f"the phase's goal was not reached within {limit:.0f} s")
                    break
                await asyncio.sleep(0.1)  # polling a condition, not a timing assertion
        finally:
            stop.set()
    run.durations[run.phase] = loop.time() - started


async def fail_and_recover(
    fault: str,
    *,
    fake: FakeLabelStudio,
    fake_url: URL,
    redis_url: str,
    session: aiohttp.ClientSession,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
) -> FaultRun:
    chaos = ChaosLabelStudio(fake, fake_url, session)
    front = await aiohttp_server(chaos.app())
    run = FaultRun(fault, chaos)
    async with proxy_process(
        front.make_url("/"),
        fake.legacy_token,
        tmp_path / f"proxy-{fault}.log",
        REDIS_URL=redis_url,
        PROXY_KEY_PREFIX=f"chaos-{fault}:",  # one private Redis, a key space per proxy
        PROXY_UPSTREAM_TIMEOUT=str(UPSTREAM_TIMEOUT),
        PROXY_CACHE_TTL=str(CACHE_TTL),
        PROXY_STALE_TTL="0",
    ) as proxy:
        for annotation_id in WARM:
            run.check(annotation_id, answer := await proxy.get(session, annotation_id))
            if not (isinstance(answer, Answer) and answer.cache_status.endswith("stored")):
                run.problem(f"id {annotation_id} was not cached before the fault: {answer!r}")
        await asyncio.sleep(CACHE_TTL)  # the copies expire: from now on every request asks Label Studio

        # The fault. First one request on a cold id, then one on a warm id, each meeting the fault itself (with its
        # retries, a single request may trip the circuit); then load, until the circuit opens and every id has had
        # its answer (a stale copy, or an error).
        chaos.fault = fault
        if fault == "refused":
            port = front.port
            await front.close()
        run.enter("fault")
        for annotation_id in (COLD[0], WARM[0]):
            run.check(annotation_id, await proxy.get(session, annotation_id))
        first_cold = run.first_answers[COLD[0]]
        if isinstance(first_cold, Answer) and (first_cold.status, first_cold.cache_status) != FIRST_ERROR[fault]:
            run.problem(f"id {COLD[0]}: {first_cold.status} ({first_cold.cache_status}), not {FIRST_ERROR[fault]}")
        await drive(
            proxy,
            session,
            run,
            lambda m: m.get(CIRCUIT % "open") == 1 and run.stale_if_error >= set(WARM) and run.answered >= set(COLD),
            FAULT_LIMIT,
        )

        # The fault stops: without help, the circuit closes after its cooldown and every id is fetched again.
        chaos.fault = None
        if fault == "refused":
            front = await aiohttp_server(chaos.app(), port=port)
        run.enter("recovery")
        await drive(
            proxy, session, run, lambda m: m.get(CIRCUIT % "closed") == 1 and run.fresh >= set(ALL_IDS), RECOVERY_LIMIT
        )
    if proxy.process.returncode != 0:
        run.problem(f"the proxy exited with {proxy.process.returncode} after SIGTERM")
    if run.problems:
        run.problems.append(f"[{fault}] proxy log, last lines:\n{proxy.log_tail()}")
    return run


async def test_label_studio_failing_in_every_way_is_hidden_by_stale_copies_and_the_proxy_recovers(
    aiohttp_server: ServerFactory, redis_url: str, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """500s, an HTML 503, hanging, dripping, closing mid-body, not speaking HTTP, not listening: one proxy process
    per fault, all at once (each has its own circuit breaker, and each needs its 5 s of real time to cool down)."""
    fake = FakeLabelStudio()
    for _ in ALL_IDS:
        fake.add_annotation()
    upstream: TestServer = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(
                fail_and_recover(
                    fault,
                    fake=fake,
                    fake_url=upstream.make_url("/"),
                    redis_url=redis_url,
                    session=session,
                    aiohttp_server=aiohttp_server,
                    tmp_path=tmp_path,
                )
            )
            for fault in FAILURES
        ]
    runs = [task.result() for task in tasks]
    for run in runs:
        print(run.summary())
        record_property(f"fault {run.fault}", run.summary())
    problems = [problem for run in runs for problem in run.problems]
    assert not problems, "\n".join(problems)


async def test_invalid_bodies_are_never_served_and_never_hidden(
    aiohttp_server: ServerFactory, redis_url: str, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """A 200 whose body fails validation is Label Studio's answer, not a failure: 502 even with a stale copy
    (docs/api.md: "A 404 or an invalid body is never hidden"), never the body itself, and the circuit stays closed,
    so the proxy is well again with the next good answer."""
    fake = FakeLabelStudio()
    for _ in ALL_IDS:
        fake.add_annotation()
    upstream: TestServer = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:
        chaos = ChaosLabelStudio(fake, upstream.make_url("/"), session)
        front = await aiohttp_server(chaos.app())
        run = FaultRun("invalid bodies", chaos)
        async with proxy_process(
            front.make_url("/"),
            fake.legacy_token,
            tmp_path / "proxy.log",
            REDIS_URL=redis_url,
            PROXY_UPSTREAM_TIMEOUT=str(UPSTREAM_TIMEOUT),
            PROXY_CACHE_TTL=str(CACHE_TTL),
            PROXY_STALE_TTL="0",
        ) as proxy:
            for annotation_id in WARM:
                answer = await proxy.get(session, annotation_id)
                assert isinstance(answer, Answer), answer
                assert answer.cache_status.endswith("stored")
            stored = set(WARM)  # ids with a copy, expired or not: fetched again for it, said fwd=stale (RFC 9211)
            for fault in INVALID_BODIES:
                await asyncio.sleep(CACHE_TTL)  # the copies expire: the next requests ask Label Studio
                chaos.fault = fault
                run.phase = fault
                for annotation_id in ALL_IDS:
                    answer = await proxy.get(session, annotation_id)
                    assert isinstance(answer, Answer), answer
                    run.counts[fault][f"{answer.status} {answer.cache_status}"] += 1
                    assert answer.status == 502, (fault, annotation_id, answer)
                    fetched = REFETCHED if annotation_id in stored else FETCHED
                    assert answer.cache_status.startswith(fetched), answer.cache_status
                    assert answer.cache_status.endswith("detail=invalid_body"), answer.cache_status
                    detail = json.loads(answer.body)["detail"]
                    assert detail.startswith("Label Studio returned an invalid annotation body"), detail
                    assert answer.error_shape_problem() is None
                chaos.fault = None
                for annotation_id in ALL_IDS:  # no cooldown to wait for: the next good answer is served
                    answer = await proxy.get(session, annotation_id)
                    assert isinstance(answer, Answer), answer
                    fetched = REFETCHED if annotation_id in stored else FETCHED
                    assert (answer.status, answer.cache_status) == (200, f"{fetched}; fwd-status=200; stored")
                    assert comparable(answer.body) in chaos.served[annotation_id]
                stored.update(ALL_IDS)
            metrics = await proxy.metrics(session)
        assert proxy.process.returncode == 0
    assert metrics[CIRCUIT % "closed"] == 1
    assert metrics["annotation_proxy_validation_failures_total"] == chaos.faulty_answers.total()
    assert set(chaos.faulty_answers) == set(INVALID_BODIES)
    print(run.summary())
    record_property("invalid bodies", run.summary())


# --- Redis killed (or frozen) and back, under load ------------------------------------------------------------


@pytest.mark.parametrize("outage", ["killed", "frozen"])
async def test_redis_gone_under_load_every_request_is_answered_and_hits_resume_without_a_restart(
    outage: str, aiohttp_server: ServerFactory, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """``killed``: SIGKILL, then a new, empty redis-server on the same port. ``frozen``: SIGSTOP (connections stay
    open, nothing answers: every command times out), then SIGCONT with the data still there, and whatever the
    timed-out commands left on their connections must never become an answer to another request."""
    fake, upstream, bodies = await six_annotations(aiohttp_server)
    with ExitStack() as redis_servers:
        redis = redis_servers.enter_context(running_redis())  # this test's own

        def resume() -> None:  # a frozen process cannot be stopped
            if redis.process.poll() is None:
                redis.process.send_signal(signal.SIGCONT)

        redis_servers.callback(resume)
        async with (
            aiohttp.ClientSession() as session,
            proxy_process(
                upstream.make_url("/"),
                fake.legacy_token,
                tmp_path / "proxy.log",
                REDIS_URL=redis.url,
                PROXY_REDIS_TIMEOUT="0.2",
                PROXY_HOT_TTL=str(HOT_TTL),
            ) as proxy,
        ):
            load = SteadyLoad(proxy, session, bodies)

            async def breaker_open() -> bool:
                return await load.cache_available() == 0

            async with load.running(workers=8):
                await load.until(lambda: load.stats["before"].hits >= 200, 30, "hits before the outage")

                if outage == "killed":
                    redis.process.kill()  # no goodbye to its clients
                    await asyncio.to_thread(redis.process.wait, 10)
                else:
                    redis.process.send_signal(signal.SIGSTOP)
                await load.enter("during")
                await poll_until(breaker_open, 30)  # the load goes on meanwhile
                # The hot tier may serve what it held when Redis went, for PROXY_HOT_TTL at most (a frozen Redis
                # breaks no connection, so nothing turns the tier off sooner); after that, only Label Studio.
                await asyncio.sleep(HOT_TTL)
                await load.enter("during, past the hot TTL")
                # Gone a while longer than the breaker's cooldown, so that probes meet the dead Redis too.
                await asyncio.sleep(CACHE_BREAKER_COOLDOWN + 1)

                await load.enter("after: until the first hit")
                if outage == "killed":
                    await asyncio.to_thread(redis_servers.enter_context, running_redis(port=redis.port))
                else:
                    resume()
                first_hit = await load.until(
                    lambda: load.stats["after: until the first hit"].hits > 0, RECOVERY_LIMIT, "a hit again"
                )
                await load.enter("after: hits resumed")
                await load.until(lambda: load.stats["after: hits resumed"].requests >= 300, 30, "requests after")
            cache_available_at_end = await load.cache_available()
        assert proxy.process.returncode == 0

    after = PhaseStats()
    for phase in ("after: until the first hit", "after: hits resumed"):
        after.add(load.stats[phase])
    figures = {phase: str(stats) for phase, stats in load.stats.items()}
    figures["after (total)"] = str(after)
    figures["first hit, seconds after Redis was back"] = f"{first_hit:.1f}"
    for phase, text in figures.items():
        print(f"redis {outage}, {phase}: {text}")
        record_property(f"redis {outage}, {phase}", text)

    for phase, stats in load.stats.items():
        assert stats.errors == 0, f"{phase}: {stats}: {stats.examples}"
    assert load.stats["during, past the hot TTL"].requests > 0
    assert load.stats["during, past the hot TTL"].hits == 0  # every answer came from Label Studio
    assert load.stats["after: hits resumed"].hits > 0
    assert cache_available_at_end == 1

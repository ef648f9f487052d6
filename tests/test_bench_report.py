"""bench/run.py's verdict lines (a figure printed beside PASS or FAIL reads as the verdict it gave), its notes, how
it moves a process to a CPU, and the order in which bench/hit_costs.py times a hit's parts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bench.hit_costs import BATCH, REPEATS, per_hit
from bench.run import (
    Cpu,
    MiB,
    Row,
    Run,
    WrkResult,
    cold_floor_note,
    hit_target,
    on_cpu,
    paired_note,
    redis_apart_note,
    targets,
)


def row(name: str, rps: float, *, p50_ms: float = 1.0, p99_ms: float = 2.0, cpu_us: float = 40.0) -> Row:
    result = WrkResult(rps=rps, p50_ms=p50_ms, p99_ms=p99_ms, requests=int(rps), bytes_per_response=1000.0)
    return Row(name, name, result, Cpu(server_us=cpu_us, others=0.0))


@pytest.mark.parametrize(
    ("together", "met", "shown"),
    [
        ((0.80, 0.78, 0.797), False, "0.797 together"),  # two decimals would say 0.80 beside a FAIL
        ((0.80, 0.7996, 0.79), False, "0.7996 together"),  # and three 0.800
        ((0.81, 0.79, 0.83), True, "0.81 together"),
        ((0.8, 0.8, 0.8), True, "0.80 together"),
    ],
)
def test_a_hit_ratio_is_printed_as_precisely_as_its_verdict_needs(
    together: tuple[float, ...], met: bool, shown: str
) -> None:
    run = Run(seconds=1.0, together={"c": [(ratio, 1.0) for ratio in together]})
    ok, text = hit_target(run, row("c", 9_000.0), row("a'", 10_000.0), 0.8)
    assert ok is met
    assert text.endswith(shown), text


def test_each_proxy_hit_row_has_its_paired_ratios_and_their_median() -> None:
    run = Run(seconds=1.0, pairs={"b": [(0.91, 1.2), (0.85, 1.5), (0.97, 1.1)], "c": [(0.80, 2.0), (0.95, 1.3)]})
    note = paired_note(run)
    assert (
        "(b) at 0.91, 0.85, 0.97 of (a')'s requests/s (median 0.91), p99 at 1.20x, 1.50x, 1.10x (median 1.20x)" in note
    )
    assert "(c) at 0.80, 0.95 of (a')'s requests/s (median 0.88)" in note
    assert paired_note(Run(seconds=1.0)) == ""


def test_a_rows_ratio_just_under_its_target_is_not_printed_as_the_target() -> None:
    ok, text = hit_target(Run(seconds=1.0), row("b", 8_996.0), row("a'", 10_000.0), 0.9)
    assert not ok
    assert text.endswith(": 0.8996 in the rows"), text  # 0.90, and 0.900, would read as met


def test_figures_just_past_an_upper_target_are_not_printed_as_the_target() -> None:
    run = Run(seconds=1.0)
    run.rows = [
        row("a'", 10_000.0, p99_ms=2.0),
        row("b", 9_500.0),
        row("c", 9_000.0, p99_ms=4.008),  # 2.004x the baseline's
        row("d0", 700.0, p50_ms=21.0),
        row("d", 650.0, p50_ms=22.004, cpu_us=300.4),  # +1.004 ms
        row("d2", 600.0, p50_ms=21.5, cpu_us=250.0),
    ]
    run.rows[4].rss = int(99.7 * MiB)
    lines = dict((text.split(":")[0], (ok, text)) for ok, text in targets(run))
    assert lines["(c) p99 <= 2x (a')'s"] == (False, "(c) p99 <= 2x (a')'s: 2.004x")
    ok, text = lines["cold misses add <= 1 ms to (d0)'s p50, in-process (d) and Redis (d2)"]
    assert not ok
    assert text.endswith(": +1.004 ms, +0.50 ms"), text
    ok, text = lines["proxy CPU per cold miss <= 300 us, (d) and (d2)"]
    assert not ok
    assert text.endswith(": 300.4 us, 250 us"), text
    assert lines["proxy RSS < 100 MB through the run"] == (True, "proxy RSS < 100 MB through the run: peak 99.7 MiB")


def cold_run(*more: Row) -> Run:
    """A run with the rows the verdicts need, the cold ones failing theirs, and ``more`` after (d0)."""
    run = Run(seconds=1.0)
    run.rows = [row("a'", 10_000.0), row("b", 9_500.0), row("c", 9_000.0), row("d0", 700.0, p50_ms=21.0, cpu_us=130.0)]
    run.rows += [*more, row("d", 680.0, p50_ms=22.5, cpu_us=428.0), row("d2", 600.0, p50_ms=27.0, cpu_us=642.0)]
    return run


def test_the_cold_verdicts_and_their_note_set_the_proxy_beside_aiohttps_own_pass_through() -> None:
    run = cold_run(row("d1", 690.0, p50_ms=22.1, cpu_us=214.0))
    lines = dict((text.split(":")[0], text) for _, text in targets(run))
    added = lines["cold misses add <= 1 ms to (d0)'s p50, in-process (d) and Redis (d2)"]
    assert added.endswith(": +1.50 ms, +6.00 ms; the floor (d1): +1.10 ms"), added
    cpu = lines["proxy CPU per cold miss <= 300 us, (d) and (d2)"]
    assert cpu.endswith(": 428 us, 642 us; the floor (d1): 214 us"), cpu
    note = cold_floor_note(run)
    assert "adds +1.10 ms to (d0)'s p50 and takes 214 us of CPU a miss" in note, note
    assert "at 2.0x and 3.0x the floor's CPU a miss" in note, note
    run = cold_run()  # a run without the floor: no note, and the verdicts as the issue words them
    assert cold_floor_note(run) == ""
    assert all("floor" not in text for _, text in targets(run))


def test_the_redis_row_off_the_proxys_cpu_is_set_beside_the_verdicts_not_among_them() -> None:
    run = cold_run()
    verdicts = targets(run)
    assert redis_apart_note(run) == ""  # skipped where redis-server cannot be moved off the proxy's CPU
    run.rows.append(row("d3", 680.0, p50_ms=22.2, cpu_us=600.0))
    note = redis_apart_note(run)  # without the floor (d1) too
    assert note.startswith(
        "With redis-server kept off the proxy's CPU (d3), the Redis row adds +1.20 ms to (d0)'s p50 at 600 us a "
        "miss, against (d2)'s +6.00 ms at 642 us with it left free"
    ), note
    assert targets(run) == verdicts  # the verdicts stay on (d2), as the issue measured it


@pytest.mark.skipif(
    0 not in os.sched_getaffinity(0) or len(os.sched_getaffinity(0)) < 2,
    reason="this process is not on CPU 0 and another: its children's threads could not show a move to CPU 0",
)
def test_a_process_is_moved_to_one_cpu_with_all_its_threads() -> None:
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    with subprocess.Popen([sys.executable, "-c", code]) as process:  # noqa: S603 - this interpreter, fixed code
        try:
            tasks = Path(f"/proc/{process.pid}/task")
            deadline = time.monotonic() + 10
            while len(list(tasks.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            threads = [int(task.name) for task in tasks.iterdir()]
            assert len(threads) == 2
            on_cpu(process.pid, 0)
            assert [os.sched_getaffinity(thread) for thread in threads] == [{0}, {0}]
        finally:
            process.kill()


async def test_a_hits_parts_take_turns_a_run_each_so_a_drifting_host_moves_them_alike() -> None:
    """The write is worked out as one part less another: with each part's runs one after another, a host that
    sped up in between once made it negative in the report."""
    calls: list[str] = []

    def part(name: str) -> Callable[[int], Awaitable[None]]:
        async def call(i: int) -> None:
            calls.append(name)

        return call

    hits = 3 * BATCH
    runs = await per_hit({"handler": part("handler"), "and write": part("and write")}, hits)
    warm_up = 2 * BATCH * 10
    assert calls[warm_up:] == (["handler"] * hits + ["and write"] * hits) * REPEATS
    assert [len(figures) for figures in runs.values()] == [REPEATS, REPEATS]

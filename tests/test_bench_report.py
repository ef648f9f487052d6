"""bench/run.py's verdict lines: a figure printed beside PASS or FAIL reads as the verdict it gave."""

from __future__ import annotations

import pytest

from bench.run import Cpu, Row, Run, WrkResult, hit_target


def row(name: str, rps: float) -> Row:
    result = WrkResult(rps=rps, p50_ms=1.0, p99_ms=2.0, requests=int(rps), bytes_per_response=1000.0)
    return Row(name, name, result, Cpu(server_us=40.0, others=0.0))


@pytest.mark.parametrize(
    ("together", "met", "shown"),
    [
        ((0.80, 0.78, 0.797), False, "0.797 together"),  # two decimals would say 0.80 beside a FAIL
        ((0.81, 0.7996, 0.83), True, "0.81 together"),
        ((0.8, 0.8, 0.8), True, "0.80 together"),
        ((0.75, 0.76, 0.77), False, "0.76 together"),
    ],
)
def test_a_hit_ratio_is_printed_as_precisely_as_its_verdict_needs(
    together: tuple[float, ...], met: bool, shown: str
) -> None:
    run = Run(seconds=1.0, together={"c": [(ratio, 1.0) for ratio in together]})
    ok, text = hit_target(run, row("c", 9_000.0), row("a'", 10_000.0), 0.8)
    assert ok is met
    assert text.endswith(shown), text


def test_a_rows_ratio_just_under_its_target_is_not_printed_as_the_target() -> None:
    ok, text = hit_target(Run(seconds=1.0), row("b", 8_996.0), row("a'", 10_000.0), 0.9)
    assert not ok
    assert text.endswith(": 0.8996 in the rows"), text  # 0.90, and 0.900, would read as met

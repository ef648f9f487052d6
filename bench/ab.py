"""Two versions of the proxy loaded at once on one CPU: how much CPU a hit (or a cold miss) of B costs against A's.

    PYTHONPATH=. python bench/ab.py TREE_A TREE_B [--rounds 8] [--seconds 5] [--store redis|memory|mixed]
                                                [--env-b NAME=VALUE ...] [--python-b PYTHON] [--cold]

TREE_A and TREE_B are checkouts of this repository (``git worktree add /tmp/a main``); each proxy imports
``proxy`` from its own tree (checked before it starts), with this checkout's virtual environment. Both run
``python -m proxy`` as bench/run.py's hit rows do (defaults, client keys, INFO access log to a file), in front of
one fake upstream, each with its own private redis-server (``--store redis``), the in-process store
(``memory``), or A with the in-process store and B with Redis (``mixed``: what Redis adds to a hit). ``--env-b``
sets a variable for B only (``PROXY_LOG_LEVEL=WARNING``: what the access line costs). ``--python-b`` runs B on
another interpreter, one with the same packages installed (``A`` and ``B`` may then be one tree): what the
interpreter's build or version costs.

Both proxies share CPU 1, each loaded by its own wrk on CPU 0 (bench/run.py's hit script) for ``--seconds``, so
both live through the same moments of the machine. ``--cold`` loads them with cold misses instead, as the
bench's cold rows do: every request a new id, 16 connections, the upstream answering after 20 ms. Each round
prints each one's CPU per request (user and system, from /proc), its p50, and B's CPU over A's; the last line is
the median of the rounds. A shared host moves a single server's figure by half within minutes
(docs/performance-log.md, the tenth round), where the ratio of two servers loaded at once moves by a few percent:
run ``A A`` first to see this machine's spread. This is how the tenth round of
docs/performance-log.md measured a part's cost: the tree without it against the tree with it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from bench.run import (
    COLD_CONNECTIONS,
    LATENCY,
    LOOPBACK,
    ROOT,
    TICKS,
    ColdIds,
    cold_script,
    hot_script,
    process_ticks,
    proxy,
    running,
    upstream,
    warm_hits,
    wrk_together,
)
from tests.support.ports import free_port
from tests.support.processes import clean_environment
from tests.support.redis_servers import running_redis

CONNECTIONS = 32
WARM_UP_SECONDS = 2.0


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree_a", type=Path, help="checkout A: the reference")
    parser.add_argument("tree_b", type=Path, help="checkout B: the change")
    parser.add_argument("--rounds", type=int, default=8, help="rounds loaded at once (default 8)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per round (default 5)")
    parser.add_argument("--store", choices=("redis", "memory", "mixed"), default="redis", help="default redis")
    parser.add_argument("--env-b", action="append", default=[], metavar="NAME=VALUE", help="for B only")
    parser.add_argument("--python-b", default=sys.executable, metavar="PYTHON", help="B's interpreter")
    parser.add_argument("--cold", action="store_true", help="cold misses instead of hits")
    args = parser.parse_args(argv)
    for tree in (args.tree_a, args.tree_b):
        if not (tree / "proxy" / "__main__.py").is_file():
            parser.error(f"{tree} is not a checkout of annotation-proxy")
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds takes 1 or more, --seconds more than 0")
    if not all(setting.partition("=")[0] and "=" in setting for setting in args.env_b):
        parser.error("--env-b takes NAME=VALUE")
    return args


def tree_env(tree: Path, python: str = sys.executable) -> dict[str, str]:
    """The environment that has ``python -m proxy`` import ``proxy`` from ``tree``: ``python -m`` puts its working
    directory (this checkout, where bench/run.py starts servers) ahead of PYTHONPATH, unless PYTHONSAFEPATH is
    set. Checked, since a tree that is silently not the one measured makes any change look like noise."""
    env = {"PYTHONPATH": str(tree.resolve()), "PYTHONSAFEPATH": "1"}
    found = subprocess.run(
        [python, "-c", "import proxy; print(proxy.__file__)"],
        env=clean_environment() | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    where = found.stdout.strip().splitlines()[-1]
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the proxy for {tree} would import {where}")
    return env


class Load:
    """What each round sends: hits on the bench's hot ids, or cold misses on ids no round has asked for."""

    def __init__(self, cold: bool) -> None:
        self.cold = cold
        self.connections = COLD_CONNECTIONS if cold else CONNECTIONS
        self._cold_ids = ColdIds()  # each wrk numbers its own from a round's first id

    def script(self) -> str:
        return cold_script(self._cold_ids()) if self.cold else hot_script()


def main(argv: list[str]) -> int:
    args = arguments(argv)
    extra = dict(setting.split("=", 1) for setting in args.env_b)
    if args.python_b != sys.executable:
        print(f"A on {sys.executable}, B on {args.python_b}", flush=True)
    load = Load(args.cold)
    with ExitStack() as stack:
        upstream_port = free_port()
        upstream_url = f"http://{LOOPBACK}:{upstream_port}/health"
        latency = LATENCY if args.cold else 0.0
        command = upstream(upstream_port, latency=latency)
        stack.enter_context(running(command, url=upstream_url, what="the upstream", cpu=0))
        bases: list[str] = []
        pids: list[int] = []
        for name, tree in (("A", args.tree_a), ("B", args.tree_b)):
            redis_url = None
            if args.store == "redis" or (args.store == "mixed" and name == "B"):
                redis_url = stack.enter_context(running_redis()).url
            python = args.python_b if name == "B" else sys.executable
            env = tree_env(tree, python) | (extra if name == "B" else {})
            base, pid = stack.enter_context(proxy(upstream_port, redis_url, extra=env, python=python))
            pids.append(pid)
            warm_hits(base)
            bases.append(base)
        wrk_together(bases, load.script(), seconds=WARM_UP_SECONDS, connections=load.connections)
        ratios: list[float] = []
        for round_number in range(1, args.rounds + 1):
            before = [process_ticks(pid) for pid in pids]
            results = wrk_together(bases, load.script(), seconds=args.seconds, connections=load.connections)
            a, b = (
                (process_ticks(pid) - ticks) / TICKS * 1e6 / result.requests
                for pid, ticks, result in zip(pids, before, results, strict=True)
            )
            if a <= 0 or b <= 0:  # a proxy that stopped reads as no CPU at all
                raise SystemExit(f"round {round_number}: a proxy stopped (A {a:.1f} us, B {b:.1f} us a request)")
            ratios.append(b / a)
            print(
                f"round {round_number}: A {a:.1f} us, B {b:.1f} us a request; B/A {b / a:.3f} "
                f"({results[0].rps:,.0f} and {results[1].rps:,.0f} requests/s, "
                f"p50 {results[0].p50_ms:.2f} and {results[1].p50_ms:.2f} ms)",
                flush=True,
            )
    print(f"B/A, the median of {len(ratios)} rounds: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

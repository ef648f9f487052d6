"""bench/ab.py measures the checkouts it is given: each proxy imports ``proxy`` from its own tree, not from the
checkout bench/run.py starts servers in (``python -m`` puts its working directory ahead of PYTHONPATH)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ab import CONNECTIONS, Load, tree_env
from bench.run import COLD_CONNECTIONS, ROOT, hot_script
from tests.support.processes import clean_environment


def fake_tree(root: Path) -> Path:
    """A checkout whose ``python -m proxy`` says where it was imported from."""
    package = root / "proxy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("print(__file__)\n")
    return root


def test_a_tree_s_proxy_is_the_one_python_m_runs_from_this_checkout(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "tree")
    env = clean_environment() | tree_env(tree)
    started = subprocess.run(
        [sys.executable, "-m", "proxy"], env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    )
    assert Path(started.stdout.strip()).resolve() == (tree / "proxy" / "__main__.py").resolve()


def test_a_tree_without_the_proxy_is_refused_before_anything_starts(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="would import"):
        tree_env(empty)  # the import falls through to the installed project


def test_each_cold_round_asks_for_ids_no_round_before_it_asked_for() -> None:
    load = Load(cold=True)
    first, second = (int(re.search(r"local n = (\d+)", load.script())[1]) for _ in range(2))
    assert second - first > 100_000  # past what a round asks for (about 600 misses/s): a repeated id is a hit
    assert load.connections == COLD_CONNECTIONS
    hits = Load(cold=False)
    assert hits.script() == hits.script() == hot_script()
    assert hits.connections == CONNECTIONS

"""bench/ab.py measures the checkouts it is given: each proxy imports ``proxy`` from its own tree, not from the
checkout bench/run.py starts servers in (``python -m`` puts its working directory ahead of PYTHONPATH)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.ab import tree_env
from bench.run import ROOT
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

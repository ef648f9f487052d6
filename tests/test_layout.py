"""The suite's layout: what tests share lives in tests/support (and tests/fakes), so no test module imports another
test module or a conftest, and bench/ takes from tests/ only tests.support and tests.fakes.

Every tests/**/*.py and bench/*.py is parsed (not imported); imports inside functions count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("tests.support", "tests.fakes")  # what bench/ may import from tests/


def module_name(path: Path) -> str:
    """``tests/e2e/test_e2e.py`` -> ``tests.e2e.test_e2e``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every module ``source`` (the text of ``module``) imports, absolute, with its line: for ``from a import b``
    both ``a`` and ``a.b`` (``b`` may be a module), relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def is_test_module_or_conftest(name: str) -> bool:
    """``tests.test_x``, ``tests.e2e.test_y``, ``tests.conftest``, ``tests.e2e.conftest`` (or anything inside): a
    ``test_*`` or ``conftest`` module of a package under tests/ (not a name ``test_*`` inside a module)."""
    parts = name.split(".")
    return parts[0] == "tests" and any(
        (part.startswith("test_") or part == "conftest") and ROOT.joinpath(*parts[:i]).is_dir()
        for i, part in enumerate(parts[1:], 1)
    )


def is_shared(name: str) -> bool:
    return any(name == shared or name.startswith(shared + ".") for shared in SHARED)


def first_per_line(found: Iterable[tuple[Path, int, str]]) -> list[str]:
    """One line of report per import statement (its module, not each name it takes)."""
    first: dict[tuple[Path, int], str] = {}
    for path, line, name in found:
        first.setdefault((path, line), name)
    return [f"{path.relative_to(ROOT)}:{line}: imports {name}" for (path, line), name in first.items()]


def python_files(*patterns: str) -> list[Path]:
    return sorted(path for pattern in patterns for path in ROOT.glob(pattern) if ".venv" not in path.parts)


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    files = python_files("tests/**/*.py", "bench/*.py")
    assert ROOT / "tests" / "conftest.py" in files
    problems = first_per_line(
        (path, line, name)
        for path in files
        for line, name in imported(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
        if is_test_module_or_conftest(name)
    )
    assert not problems, "shared code belongs in tests/support:\n" + "\n".join(problems)


def test_bench_imports_from_tests_only_the_support_and_the_fakes() -> None:
    files = python_files("bench/*.py")
    assert files
    problems = first_per_line(
        (path, line, name)
        for path in files
        for line, name in imported(path.read_text(), module_name(path))
        if name.startswith("tests.") and not is_shared(name)
    )
    assert not problems, "bench/ may use tests.support and tests.fakes only:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "module", "flagged"),
    [
        ("from tests.test_chaos import proxy_process", "tests.test_topologies", True),
        ("import tests.test_service", "tests.test_hot", True),
        ("from tests.conftest import CLIENT_KEY", "tests.test_proxy", True),
        ("from tests.e2e.conftest import Dataset", "tests.e2e.test_e2e", True),
        ("from tests import test_timesince", "tests.test_render", True),
        ("from tests import conftest", "tests.support.live", True),
        ("from .test_service import POLICY", "tests.test_replicas", True),
        ("from . import conftest", "tests.e2e.test_e2e", True),
        ("def f():\n    from tests.test_chaos import Answer", "tests.test_memory", True),
        ("from tests.support.processes import proxy_process", "tests.test_topologies", False),
        ("from tests.fakes.label_studio import FakeLabelStudio", "tests.test_proxy", False),
        ("from tests import support", "tests.test_proxy", False),
        ("from tests.e2e.dataset import Dataset", "tests.e2e.test_e2e", False),
        ("from tests.support.moments import test_settings", "tests.test_render", False),  # a name, not a module
        ("import pytest", "tests.test_proxy", False),
    ],
)
def test_the_check_finds_imports_of_test_modules_and_conftests(source: str, module: str, flagged: bool) -> None:
    assert any(is_test_module_or_conftest(name) for _, name in imported(source, module)) is flagged


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("from tests.support.redis_servers import running_redis", True),
        ("from tests.fakes.source import ScriptedSource", True),
        ("from tests import support", True),
        ("from tests.samples import sample", False),
        ("from tests import samples", False),
        ("import tests.conftest", False),
        ("from tests.e2e.label_studio import LabelStudio", False),
    ],
)
def test_the_bench_check_allows_only_the_support_and_the_fakes(source: str, allowed: bool) -> None:
    names = [name for _, name in imported(source, "bench.run") if name.startswith("tests.")]
    assert all(is_shared(name) for name in names) is allowed

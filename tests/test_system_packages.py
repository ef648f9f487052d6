""".ci/system-packages, which `make test`, `make run` and `make bench` run first, as root on a fresh machine.

A fresh machine often has another apt running when `make test` starts (Debian's daily update and upgrade), and
apt refuses a second one while the first holds its locks. These tests hold apt's locks as that other apt
would (the same POSIX locks on the same files) and run the script with the real apt-get, which has
python3-venv to install: the interpreter is hidden from its PATH.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.deploy_files import ROOT

SCRIPT = ROOT / ".ci" / "system-packages"
LISTS_LOCK = Path("/var/lib/apt/lists/lock")  # what `apt-get update` locks
DPKG_LOCK = Path("/var/lib/dpkg/lock-frontend")  # what `apt-get install` locks first


@pytest.fixture
def path_without_python(tmp_path: Path) -> str:
    """A PATH with every command of /usr/bin and /bin but Python's, so the script finds python3-venv missing."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("the script installs with apt-get as root (CI and `make test` run as root, on Debian)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in (Path("/usr/bin"), Path("/bin")):
        for command in directory.iterdir():
            link = bin_dir / command.name
            if not command.name.startswith("python") and not link.exists():
                link.symlink_to(command)
    return f"{bin_dir}:/usr/sbin:/sbin"


@contextmanager
def locked(path: Path = LISTS_LOCK) -> Iterator[None]:
    """One of apt's locks held, as another apt-get running holds it."""
    with path.open("w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails at once if another apt runs now: not ours to wait
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def start_script(path: str, *, lock_wait: int, **env: str) -> subprocess.Popen[str]:
    """The script as `make run` runs it (its one package: python3-venv), its stderr to read."""
    environment = {**os.environ, **env, "PATH": path, "APT_LOCK_WAIT": str(lock_wait)}
    return subprocess.Popen([SCRIPT, "run"], env=environment, stderr=subprocess.PIPE, text=True)  # noqa: S603 - ours


@pytest.mark.parametrize(("lock", "command"), [(LISTS_LOCK, "update"), (DPKG_LOCK, "install")])
def test_another_apt_holding_a_lock_is_waited_for(path_without_python: str, lock: Path, command: str) -> None:
    with locked(lock):
        script = start_script(path_without_python, lock_wait=300)
        assert script.stderr is not None
        said = [script.stderr.readline(), script.stderr.readline()]  # what it installs, then that it waits
        # The lock is let go here, with the script waiting for it (without the wait, apt-get had already failed).
    with script.stderr:
        said.append(script.stderr.read())
    assert script.wait(timeout=300) == 0, "".join(said)
    assert said[0] == "installing: python3-venv\n"
    assert said[1] == f"apt-get {command}: another apt holds its lock; waiting for it, up to 300 s\n"
    assert said[2] == ""  # and nothing else: no error of apt's


def test_a_lock_held_past_the_wait_fails_with_apts_own_message(path_without_python: str) -> None:
    with locked():
        script = start_script(path_without_python, lock_wait=5)  # apt-get takes about a second to fail
        _, stderr = script.communicate(timeout=60)
    assert script.returncode != 0
    assert "waiting for it, up to 5 s" in stderr
    assert "E: Could not get lock /var/lib/apt/lists/lock" in stderr


def test_any_other_failure_of_the_update_stops_at_once(path_without_python: str, tmp_path: Path) -> None:
    """Only the lock is waited for: a broken source list fails the first try, with apt's message."""
    sources = tmp_path / "sources.list"
    sources.write_text("this is not a source line\n")
    config = tmp_path / "apt.conf"
    config.write_text(f'Dir::Etc::sourcelist "{sources}";\nDir::Etc::sourceparts "{tmp_path / "none"}";\n')
    script = start_script(path_without_python, lock_wait=300, APT_CONFIG=str(config))
    _, stderr = script.communicate(timeout=60)
    assert script.returncode != 0
    assert "waiting" not in stderr
    assert "E: The list of sources could not be read." in stderr

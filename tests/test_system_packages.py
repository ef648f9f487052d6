""".ci/system-packages, which `make test`, `make run` and `make bench` run first, as root on a fresh machine.

A fresh machine often has another apt running when `make test` starts (Debian's daily update and upgrade), and
apt refuses a second one while the first holds its locks. These tests run the script with the real apt-get, on an
apt of their own (APT_CONFIG: its package lists, dpkg's state copied from this machine, no sources), so they need
no network and leave this machine's apt alone; redis-server is hidden from the script's PATH, so it has a package
to install, one already installed (the suite needs it) and left as it is. A test holds that apt's locks as another
apt-get running would: the same POSIX locks on the same files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.deploy_files import ROOT
from tests.support.waiting import wait_until

SCRIPT = ROOT / ".ci" / "system-packages"
HIDDEN = "redis-server"  # the command hidden from the script, and the package it then installs
WAITS = "another apt holds its lock; waiting for it"


@dataclass(frozen=True)
class Apt:
    """An apt of the test's own, and a PATH for the script without HIDDEN."""

    config: Path
    lists_lock: Path  # what `apt-get update` locks
    dpkg_lock: Path  # what `apt-get install` locks first
    sources: Path
    path: str


@pytest.fixture
def apt(tmp_path: Path) -> Apt:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("the script installs with apt-get as root (CI and `make test` run as root, on Debian)")
    lists, dpkg, cache = tmp_path / "lists", tmp_path / "dpkg", tmp_path / "cache"
    for directory in (lists / "partial", dpkg, cache / "archives" / "partial"):
        directory.mkdir(parents=True)
    shutil.copy("/var/lib/dpkg/status", dpkg / "status")  # what is installed: HIDDEN's package among it
    sources = tmp_path / "sources.list"
    sources.touch()
    config = tmp_path / "apt.conf"
    config.write_text(
        f'Dir::State::lists "{lists}";\nDir::State::status "{dpkg / "status"}";\nDir::Cache "{cache}";\n'
        f'Dir::Etc::sourcelist "{sources}";\nDir::Etc::sourceparts "{tmp_path / "sources.list.d"}";\n'
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in Path("/usr/bin").iterdir():  # /bin is the same directory on Debian since bookworm
        if command.name not in (HIDDEN, "python3"):
            (bin_dir / command.name).symlink_to(command)
    # python3 is the suite's own interpreter, which can make a virtualenv: python3-venv is not wanted, whatever
    # Debian's python3 lacks.
    (bin_dir / "python3").symlink_to(sys.executable)
    return Apt(config, lists / "lock", dpkg / "lock-frontend", sources, f"{bin_dir}:/usr/sbin:/sbin")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One of apt's locks held, as another apt-get running holds it."""
    with path.open("w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


@contextmanager
def running_script(apt: Apt, stderr: Path, *, lock_wait: str) -> Iterator[subprocess.Popen[bytes]]:
    """The script as `make test` runs it, its stderr to a file; killed if a test leaves it running."""
    env = {**os.environ, "PATH": apt.path, "APT_CONFIG": str(apt.config), "APT_LOCK_WAIT": lock_wait}
    with stderr.open("wb") as err:
        script = subprocess.Popen([SCRIPT], env=env, stdout=subprocess.DEVNULL, stderr=err)  # noqa: S603 - ours
    try:
        yield script
    finally:
        if script.poll() is None:
            script.kill()
        script.wait(timeout=10)


@pytest.mark.parametrize("command", ["update", "install"])
async def test_another_apt_holding_a_lock_is_waited_for(apt: Apt, tmp_path: Path, command: str) -> None:
    stderr = tmp_path / "stderr"
    with running_script(apt, stderr, lock_wait="300") as script:
        with locked(apt.lists_lock if command == "update" else apt.dpkg_lock):
            script_started = stderr.read_text
            await wait_until(lambda: WAITS in script_started() or script.poll() is not None, limit=60)
        # The lock is let go here, with the script waiting for it (without the wait, apt-get had already failed).
        assert script.wait(timeout=60) == 0, stderr.read_text()
    assert stderr.read_text().splitlines() == [
        f"installing: {HIDDEN}",
        f"apt-get {command}: {WAITS}, up to 300 s",
    ]


def test_a_lock_held_past_the_wait_fails_with_apts_own_message_and_status(apt: Apt, tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    with locked(apt.lists_lock), running_script(apt, stderr, lock_wait="3") as script:
        assert script.wait(timeout=60) == 100  # apt-get's own
    said = stderr.read_text()
    assert f"apt-get update: {WAITS}, up to 3 s" in said
    assert f"E: Could not get lock {apt.lists_lock}" in said


def test_any_other_failure_stops_at_once_with_apts_own_message(apt: Apt, tmp_path: Path) -> None:
    apt.sources.write_text("this is not a source line\n")
    stderr = tmp_path / "stderr"
    with running_script(apt, stderr, lock_wait="300") as script:
        assert script.wait(timeout=60) == 100
    said = stderr.read_text()
    assert WAITS not in said
    assert "E: The list of sources could not be read." in said


def test_a_wait_that_is_not_a_whole_number_of_seconds_is_refused(apt: Apt, tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    ran = tmp_path / "ran"
    with running_script(apt, stderr, lock_wait=f"a[$(touch {ran})]") as script:  # bash's arithmetic runs it
        assert script.wait(timeout=60) == 2
    assert "APT_LOCK_WAIT must be a whole number of seconds" in stderr.read_text()
    assert not ran.exists()

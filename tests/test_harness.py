"""The suite itself: a run ended by SIGTERM stops what its fixtures started (tests/support/termination.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent

HELD = """
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def child():
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)  # as the e2e Label Studio is started
    Path({pid_file!r}).write_text(str(process.pid))
    yield
    process.terminate()
    process.wait()


def test_held(child):
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_run_sent_sigterm_stops_what_its_session_fixtures_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    (tmp_path / "test_held.py").write_text(textwrap.dedent(HELD.format(pid_file=str(pid_file))))
    run = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.termination"],
        str(tmp_path / "test_held.py"),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until(pid_file.exists, 60)
        pid = int(pid_file.read_text())
        run.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(run.wait(), 60) != 0
        assert not alive(pid)
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
        if pid_file.exists() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)

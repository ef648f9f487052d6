"""A pytest plugin (tests/conftest.py loads it): SIGTERM ends the run as Ctrl-C does, so the fixtures stop what
they started. Without it a run sent SIGTERM (a CI job's timeout, ``kill``) died at once, and the redis-servers,
proxy processes and the e2e Label Studio (in a session of its own) it had started outlived it."""

from __future__ import annotations

import signal
from types import FrameType

import pytest

_previous: dict[pytest.Config, object] = {}


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    _previous[config] = signal.signal(signal.SIGTERM, _interrupted)


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = _previous.pop(config, None)
    if callable(previous) or isinstance(previous, int):
        signal.signal(signal.SIGTERM, previous)

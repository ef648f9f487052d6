"""A clock the test moves by hand: the wall clock shared by the fake Label Studio and the proxy."""

from __future__ import annotations

START = 1_795_868_853.0  # 2026-11-28T12:27:33Z


class Clock:
    """Wall-clock seconds that a test moves by hand, shared by the fake and the proxy."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

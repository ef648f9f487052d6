"""Every command a Redis server runs for its clients, as ``MONITOR`` shows them: for tests that count round trips.

Commands a Lua script runs are left out (``MONITOR`` marks them ``lua``): a script is one round trip.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.client import Monitor


def _record(monitor: Monitor, end: str, commands: list[str]) -> None:
    while True:
        command = monitor.next_command()
        if end in command["command"]:
            return
        if command["client_type"] != "lua":
            commands.append(command["command"].split(" ", 1)[0].upper())


@contextmanager
def recorded_commands(url: str) -> Iterator[list[str]]:
    """The commands clients send while the block runs (complete when it ends), in order, each as its name."""
    commands: list[str] = []
    end = f"end-of-recording-{secrets.token_hex(4)}"
    with Redis.from_url(url) as marker, Redis.from_url(url) as client:
        marker.ping()  # connected before recording: only its ECHO shows, and that ends the recording
        with client.monitor() as monitor:  # MONITOR is on once this returns
            recorder = threading.Thread(target=_record, args=(monitor, end, commands), daemon=True)
            recorder.start()
            try:
                yield commands
            finally:
                marker.echo(end)
                recorder.join(timeout=10)

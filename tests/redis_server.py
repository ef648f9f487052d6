"""A private ``redis-server`` on a free loopback port, for tests that must not touch the shared one."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _wait_until_answering(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)  # polling for start-up, not a timing assertion
    raise RuntimeError(f"redis-server did not answer on port {port} within {START_TIMEOUT} s")


@contextmanager
def running_redis(*extra_args: str, port: int | None = None) -> Iterator[RedisServer]:
    """A fresh redis-server (on ``port``, or a free one), stopped when the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `apt-get install redis-server` (.ci/run does)")
    with tempfile.TemporaryDirectory(prefix="annotation-proxy-redis-") as workdir:
        port = port or free_port()
        process = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(Path(workdir)),
                *extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = RedisServer(port, process)
        try:
            _wait_until_answering(port, process)
            yield server
        finally:
            server.stop()

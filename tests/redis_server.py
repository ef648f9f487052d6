"""A private ``redis-server`` on a free loopback port, for tests that must not touch the shared one."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


@dataclass
class RedisCluster:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """Any node: redis-py's cluster client discovers the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is a port, and free too."""
    while True:
        port = free_port()
        if port + 10000 >= 65536:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _cluster_ok(cli: str, port: int) -> bool:
    output = subprocess.run(  # noqa: S603 - a fixed binary and arguments
        [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, check=False
    ).stdout
    return "cluster_state:ok" in output


@contextmanager
def running_redis_cluster(primaries: int = 3) -> Iterator[RedisCluster]:
    """A Redis Cluster of ``primaries`` fresh redis-servers on free ports (no replicas), every slot assigned."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not installed: `apt-get install redis-server` (.ci/run does)")
    cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
    with ExitStack() as stack:
        nodes = [stack.enter_context(running_redis(*cluster_args, port=free_cluster_port())) for _ in range(primaries)]
        subprocess.run(  # noqa: S603 - a fixed binary and arguments
            [cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in nodes), "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(cli, node.port) for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)  # polling for start-up, not a timing assertion
        yield RedisCluster(nodes)

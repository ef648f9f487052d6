"""A private ``redis-server`` on a free loopback port, for tests that must not touch the shared one."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from tests.support.ports import free_port

START_TIMEOUT = 10.0


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
                if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # answering, with or without a password
                    return
        except OSError:
            pass
        time.sleep(0.02)  # polling for start-up, not a timing assertion
    raise RuntimeError(f"redis-server did not answer on port {port} within {START_TIMEOUT} s")


@contextmanager
def running_redis(*extra_args: str, port: int | None = None, config: str | None = None) -> Iterator[RedisServer]:
    """A fresh redis-server (on ``port``, or a free one), stopped when the block ends. ``config``: the text of a
    configuration file to start from (a sentinel needs one it can rewrite)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `apt-get install redis-server` (.ci/run does)")
    with tempfile.TemporaryDirectory(prefix="annotation-proxy-redis-") as workdir:
        port = port or free_port()
        config_file: list[str] = []
        if config is not None:
            (Path(workdir) / "redis.conf").write_text(config)
            config_file = [str(Path(workdir) / "redis.conf")]
        process = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [
                binary,
                *config_file,
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


SENTINEL_SERVICE = "annotations"
SENTINEL_DOWN_AFTER_MS = 1000  # how long the primary must be silent before a sentinel calls it down
SENTINEL_FAILOVER_TIMEOUT_MS = 5000


@dataclass
class SentinelTopology:
    """A primary, its replica and three sentinels watching them (quorum 2), every one with a password."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[RedisServer]
    password: str
    sentinel_password: str

    @property
    def url(self) -> str:
        """``REDIS_URL`` for ``PROXY_REDIS_MODE=sentinel``."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return (
            f"redis+sentinel://:{self.password}@{hosts}/{SENTINEL_SERVICE}/0?sentinel_password={self.sentinel_password}"
        )

    def sentinel_client(self, index: int = 0) -> Redis:
        return Redis(port=self.sentinels[index].port, password=self.sentinel_password, decode_responses=True)

    def client(self, server: RedisServer) -> Redis:
        return Redis(port=server.port, password=self.password)

    def primary_port(self) -> int | None:
        """Where the sentinels (a majority of those that answer) say the primary is now."""
        ports: list[int] = []
        for index in range(len(self.sentinels)):
            try:
                with self.sentinel_client(index) as sentinel:
                    address = sentinel.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
            except RedisError:
                continue
            if address:
                ports.append(int(address[1]))
        agreed = [port for port in set(ports) if ports.count(port) * 2 > len(self.sentinels)]
        return agreed[0] if agreed else None

    def settled(self) -> bool:
        """Every sentinel sees the primary up, one replica and the other two sentinels; the replica is in sync."""
        primary_port = self.primary_port()
        if primary_port is None:
            return False
        for index in range(len(self.sentinels)):
            with self.sentinel_client(index) as sentinel:
                state = sentinel.sentinel_master(SENTINEL_SERVICE)
            if int(state["port"]) != primary_port or state["is_sdown"] or state["is_odown"]:
                return False
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.sentinels) - 1:
                return False
            with self.sentinel_client(index) as sentinel:
                replicas = sentinel.sentinel_slaves(SENTINEL_SERVICE)
            if not any(replica["master-link-status"] == "ok" and not replica["is_sdown"] for replica in replicas):
                return False
        return True


def wait_for(condition: Callable[[], bool], limit: float, what: str) -> None:
    """Poll ``condition`` until it holds (start-up and topology changes; not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {limit:.0f} s")
        time.sleep(0.1)


@contextmanager
def running_redis_sentinel(
    sentinels: int = 3, *, down_after_ms: int = SENTINEL_DOWN_AFTER_MS
) -> Iterator[SentinelTopology]:
    """A primary and a replica on free ports, watched by ``sentinels`` sentinels that call the primary down after
    ``down_after_ms`` of silence and then fail over."""
    password, sentinel_password = secrets.token_hex(8), secrets.token_hex(8)
    auth = ("--requirepass", password, "--masterauth", password)
    with ExitStack() as stack:
        primary = stack.enter_context(running_redis(*auth))
        replica = stack.enter_context(running_redis(*auth, "--replicaof", "127.0.0.1", str(primary.port)))
        watchers = []
        for _ in range(sentinels):
            port = free_port()
            config = "\n".join(
                [
                    f"port {port}",
                    f"requirepass {sentinel_password}",
                    f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary.port} {sentinels // 2 + 1}",
                    f"sentinel auth-pass {SENTINEL_SERVICE} {password}",
                    f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {down_after_ms}",
                    f"sentinel failover-timeout {SENTINEL_SERVICE} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                    "",
                ]
            )
            watchers.append(stack.enter_context(running_redis("--sentinel", port=port, config=config)))
        topology = SentinelTopology(primary, replica, watchers, password, sentinel_password)
        wait_for(topology.settled, 60, "the sentinels to see the primary, its replica and each other")
        yield topology

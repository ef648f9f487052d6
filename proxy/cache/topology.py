"""Where the cache lives: ``REDIS_URL`` and ``PROXY_REDIS_MODE`` turned into one of redis-py's own clients.

Three modes, no hand-written routing:

- ``standalone``: ``redis://``, ``rediss://`` (TLS) or ``unix://``, whatever ``redis.asyncio.Redis.from_url`` takes;
- ``cluster``: redis-py's ``RedisCluster``; ``REDIS_URL`` names any node and the client discovers the others;
- ``sentinel``: redis-py's ``Sentinel``, which asks the sentinels where the primary of a service is before every
  new connection, so a failover is followed without a restart. Its URL names the sentinels and the service::

      redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db][?sentinel_password=...]

  The user info is for the Redis primary; ``sentinel_username`` and ``sentinel_password`` (query parameters) are
  for the sentinels themselves, when they require a password too. Sentinel ports default to 26379.

Every client gets short timeouts (a sick Redis must cost milliseconds, then the service goes to Label Studio) and
at most ``max_connections`` connections. Standalone and Sentinel make no retries, and a request waits at most
``timeout`` for a pooled connection (:class:`WaitingConnectionPool`); the cluster client retries a failed connection
once, and its per-node pools fail at once when full (redis-py offers no waiting pool there).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

RedisMode = Literal["standalone", "cluster", "sentinel"]

ENCODING_HINT = "percent-encode special characters in the password"
DB_PATH = re.compile(r"(/[0-9]*/?)?")
HOST_BREAKERS = frozenset("@/?#\\[] \t")  # in a host name, the sign of a password that split the URL elsewhere
INVALID_OPTION = re.compile(r"Invalid value for '(\w+)'")
STANDALONE_SCHEMES = frozenset({"redis", "rediss", "unix"})
CLUSTER_SCHEMES = frozenset({"redis", "rediss"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel"})
SENTINEL_PORT = 26379
SENTINEL_QUERY = frozenset({"sentinel_username", "sentinel_password"})

HEALTH_CHECK_SECONDS = 30
CLUSTER_REDIRECTIONS = 4

Closer = Callable[[], Awaitable[None]]


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL. The passwords never show in a repr."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """For logs: the sentinels, the service and the database, never a credential."""
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/{self.db}"


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _host_and_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError("a sentinel address is not host[:port]")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = text.partition(":")
        if ":" in port_text:
            raise ValueError("an IPv6 sentinel address must be in brackets: [::1]:26379")
        if not colon:
            port_text = None
    if not host:
        raise ValueError("a sentinel address has no host")
    if port_text is None:
        return host, SENTINEL_PORT
    port = _number(port_text)
    if port is None or not 0 < port < 65536:
        raise ValueError("a sentinel port is not a number from 1 to 65535")
    return host, port


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL, or raise ValueError saying what is wrong.

    Parsed by hand, and the messages are fixed texts: a library's URL error may quote part of the URL, and the URL
    carries passwords. Special characters in a password are percent-encoded (``%23`` for ``#``, ``%26`` for ``&``).
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError("must start with redis+sentinel:// when PROXY_REDIS_MODE=sentinel")
    if "#" in rest:
        raise ValueError("must not contain '#' (percent-encode it as %23 in a password)")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    if not hosts:
        raise ValueError("names no sentinel: redis+sentinel://host:26379[,host:26379...]/service_name")
    sentinels = tuple(_host_and_port(host) for host in hosts.split(","))
    segments = [unquote(segment) for segment in path.split("/")] if path else []
    if len(segments) == 2 and segments[1] == "":
        segments.pop()  # a trailing slash
    if not 1 <= len(segments) <= 2 or not all(segments):
        raise ValueError("must end with /service_name or /service_name/db")
    db = _number(segments[1]) if len(segments) == 2 else 0
    if db is None:
        raise ValueError("the database after the service name is not a number")
    query: dict[str, str] = {}
    for pair in filter(None, query_text.split("&")):
        name, _, value = pair.partition("=")
        if name not in SENTINEL_QUERY:
            raise ValueError(f"takes no query parameters but {' and '.join(sorted(SENTINEL_QUERY))}")
        if name in query:
            raise ValueError(f"{name} is given more than once")
        query[name] = unquote(value)  # not unquote_plus: a '+' in a password stays a '+'
    username, colon, password = userinfo.partition(":")
    return SentinelURL(
        sentinels=sentinels,
        service=segments[0],
        db=db,
        username=unquote(username) or None,
        password=unquote(password) if colon else None,
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
    )


def check_url(url: str, mode: RedisMode) -> None:
    """Raise ValueError when ``url`` cannot work in ``mode`` (at start-up, before any connection is tried)."""
    scheme = url.partition("://")[0].lower()
    if mode == "sentinel":
        parse_sentinel_url(url)
        return
    if scheme in SENTINEL_SCHEMES:
        raise ValueError("a redis+sentinel:// URL needs PROXY_REDIS_MODE=sentinel")
    allowed = CLUSTER_SCHEMES if mode == "cluster" else STANDALONE_SCHEMES
    if scheme not in allowed:
        raise ValueError(f"must start with one of {', '.join(sorted(allowed))}:// when PROXY_REDIS_MODE={mode}")
    try:
        parts = urlsplit(url)
        _ = parts.port  # what redis-py's from_url will parse; its errors may quote the URL
    except ValueError:
        raise ValueError(f"is not a valid URL ({ENCODING_HINT})") from None
    # A password with a '/', '?', '#' or '@' left as it is splits the URL elsewhere: redis-py would quietly take no
    # host (localhost), or a host named after the user, and the rest, password included, for a path (or a socket's).
    if parts.fragment:
        raise ValueError(f"may not contain '#' ({ENCODING_HINT})")
    if scheme == "unix":
        if parts.netloc and not parts.netloc.endswith("@"):  # unix://[user[:password]@]/path/to.sock
            raise ValueError(f"must be unix://[user:password@]/path/to/socket ({ENCODING_HINT})")
    elif not parts.hostname:
        raise ValueError(f"names no host ({ENCODING_HINT})")
    elif any(character in HOST_BREAKERS for character in parts.hostname):
        raise ValueError(f"has an invalid host name ({ENCODING_HINT})")
    elif not DB_PATH.fullmatch(parts.path):
        raise ValueError(f"may only end with /<database number> and ?options ({ENCODING_HINT})")
    if "@" in parts.path or "@" in parts.query:  # the end of a password whose '/' or '?' ended the user part
        raise ValueError(f"has an '@' after its host ({ENCODING_HINT})")
    try:
        parse_url(url)  # the query's options, as redis-py will read them
    except ValueError as exc:
        option = INVALID_OPTION.search(str(exc))  # redis-py names the option; any other text might quote the URL
        raise ValueError(f"has an invalid {option[1]!r} option" if option else "is not a valid Redis URL") from None
    _check_connection(url, mode)


def _check_connection(url: str, mode: RedisMode) -> None:
    """Build, without connecting, the connection :func:`connect` would open for ``url``: its constructor refuses what
    ``parse_url`` lets through (an option no connection takes, ``ssl_cert_reqs=bogus``, a TLS option on ``redis://``,
    a database other than 0 in a cluster), which would otherwise fail every command, or start-up with a traceback.
    The error names the option, found by trying each alone: a constructor's message may quote a value."""
    try:
        _connection_for(url, mode)
    except Exception:  # noqa: BLE001 - whatever a constructor raises; no connection is tried
        parts = urlsplit(url)
        bare = parts._replace(query="").geturl()
        try:
            _connection_for(bare, mode)
        except Exception:  # noqa: BLE001
            if mode == "cluster" and parts.path.strip("/") not in ("", "0"):
                raise ValueError("names a database other than 0, which a Redis Cluster does not have") from None
            raise ValueError(f"is not a Redis URL redis-py can connect with in PROXY_REDIS_MODE={mode}") from None
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            try:
                _connection_for(f"{bare}?{urlencode({name: value})}", mode)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(_refused(name, exc, parts.scheme.lower())) from None
        raise ValueError("has query options redis-py cannot use together") from None


def _refused(name: str, error: Exception, scheme: str) -> str:
    """What is wrong with the query option ``name``, which alone made a connection's constructor raise ``error``."""
    if not (name.isidentifier() and len(name) <= 40):  # not an option's name: never quote URL text that may be secret
        return "has a query option redis-py cannot use"
    if not isinstance(error, TypeError):  # the constructor took the option and refused its value
        return f"has an invalid {name!r} option"
    if name.startswith("ssl") and scheme != "rediss":
        return f"has the TLS option {name!r}, which needs rediss://"
    return f"has the option {name!r}, which redis-py does not take"


def _connection_for(url: str, mode: RedisMode) -> None:
    """Construct (never connect) the connection :func:`connect` would make for ``url``."""
    if mode == "cluster":
        cluster = RedisCluster.from_url(url)  # not initialized: nothing to close
        node = next(iter(cluster.nodes_manager.startup_nodes.values()))
        node.connection_class(**node.connection_kwargs)
    else:
        ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]


class WaitingConnectionPool(ConnectionPool):
    """redis-py's ``ConnectionPool``, which fails a command at once when every connection is taken, made to wait up
    to ``timeout`` for one instead (then ``ConnectionError``, as redis-py's ``BlockingConnectionPool`` raises).

    ``BlockingConnectionPool`` waits too, but takes a condition and a timeout for every command, waiting or not:
    about 4% of a cold miss's CPU with Redis (docs/performance-log.md). Here a command that finds a connection free
    only counts it; only one that must wait arms a timeout. A slot goes back with the connection it was counted out
    with, once: redis-py gives back a connection that failed to connect before ``get_connection`` raises.
    """

    def __init__(self, *, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait = timeout  # seconds a command waits for a connection when all are taken
        self._free = asyncio.Semaphore(self.max_connections)  # connections not counted out
        self._out: set[AbstractConnection] = set()  # those counted out

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._free.locked():
            try:
                async with asyncio.timeout(self.wait):
                    await self._free.acquire()
            except TimeoutError:
                raise RedisConnectionError("No connection available.") from None
        else:
            await self._free.acquire()  # at once
        try:
            connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._free.release()  # no connection counted out: one that failed to connect went back uncounted
            raise
        self._out.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            if connection in self._out:
                self._out.discard(connection)
                self._free.release()


class WaitingSentinelConnectionPool(SentinelConnectionPool, WaitingConnectionPool):
    """redis-py's sentinel pool, waiting (up to its ``timeout``) for a free connection at its bound, as the
    standalone pool does, instead of failing the command at once."""


async def drop_idle_connections(client: Redis | RedisCluster) -> None:
    """Close the idle pooled connections of a standalone or Sentinel client (after a Redis restart each would
    fail once when next used); a cluster client re-plans its nodes itself. Best effort: a connection that cannot
    close is dropped all the same."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        with suppress(Exception):
            await pool.disconnect(inuse_connections=False)


def connect(url: str, mode: RedisMode, *, timeout: float, max_connections: int) -> tuple[Redis | RedisCluster, Closer]:
    """A client for ``url`` in ``mode``, and what closes everything it opened."""
    timeouts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if mode == "cluster":
        cluster = RedisCluster.from_url(
            url,
            max_connections=max_connections,
            # One immediate retry: the cluster client also uses it to follow a node that went away.
            retry=Retry(NoBackoff(), 1),
            # Follow each MOVED by patching that slot's owner. The default also rebuilds the whole slot map every
            # fifth MOVED by closing every connection, under the commands other tasks are running on them.
            reinitialize_steps=0,
            **timeouts,
        )
        # Redirections followed per command (default 16, sleeping 50 ms between the later ones). Enough to follow a
        # MOVED; a slot still half moved after that is a miss now rather than up to 0.4 s of waiting. (ASK rarely
        # succeeds anyway: redis-py 8.1 may send ASKING on another pooled connection than the command.)
        cluster.RedisClusterRequestTTL = CLUSTER_REDIRECTIONS
        return cluster, cluster.aclose
    if mode == "sentinel":
        return _sentinel_client(parse_sentinel_url(url), timeout=timeout, max_connections=max_connections, **timeouts)
    pool = WaitingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        retry=_no_retry(),
        health_check_interval=HEALTH_CHECK_SECONDS,
        **timeouts,
    )
    client = Redis(connection_pool=pool)

    async def close() -> None:
        await client.aclose()
        await pool.disconnect()

    return client, close


def _sentinel_client(
    target: SentinelURL, *, timeout: float, max_connections: int, **timeouts: Any
) -> tuple[Redis, Closer]:
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={
            **timeouts,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
            "retry": _no_retry(),
        },
    )
    client: Redis = sentinel.master_for(
        target.service,
        connection_pool_class=WaitingSentinelConnectionPool,
        db=target.db,
        username=target.username,
        password=target.password,
        max_connections=max_connections,
        timeout=timeout,
        retry=_no_retry(),
        health_check_interval=HEALTH_CHECK_SECONDS,
        **timeouts,
    )

    async def close() -> None:
        await client.aclose()
        await sentinel.aclose()

    return client, close

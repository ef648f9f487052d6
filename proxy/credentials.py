"""The proxy's own credentials for Label Studio: a legacy ``Token`` key, or a personal access token exchanged for
short-lived access tokens (refreshed before they expire, and once more after a 401).

The only holder of the token besides :mod:`proxy.upstream`, which asks for an ``Authorization`` value per request.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeGuard

import aiohttp
from aiohttp import hdrs
from pydantic import SecretStr
from yarl import URL

from proxy.errors import TokenRefreshFailed, UpstreamAuthRejected, UpstreamError
from proxy.exchange import read_at_most
from proxy.metrics import Metrics
from proxy.tokens import jwt_claims

log = logging.getLogger("proxy.upstream")

TOKEN_REFRESH_PATH = "api/token/refresh/"  # noqa: S105 - a path, not a secret
# The refresh's answer is one access token (a JWT of a few hundred bytes); past this, it is not read further.
REFRESH_BODY_LIMIT = 64 * 1024
# After an exchange failed, requests get that failure without another exchange for this many seconds: a Label
# Studio that cannot refresh tokens (or rejects the personal access token) is asked once a second per replica, not
# once per miss, one after another.
REFRESH_RETRY_AFTER = 1.0
# An access token whose lifetime the refresh's answer does not tell is used for this many seconds.
DEFAULT_LIFETIME = 60.0


class Credentials(Protocol):
    """How the proxy authenticates to Label Studio."""

    async def authorization(self) -> str:
        """The ``Authorization`` header value to send now."""
        ...

    def invalidate(self, used: str) -> bool:
        """Label Studio answered 401 to ``used``; return True if a retry with new credentials may succeed."""
        ...


class LegacyToken:
    """A legacy API key, sent as ``Authorization: Token <key>``. Nothing to refresh."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    async def authorization(self) -> str:
        return f"Token {self._key.get_secret_value()}"

    def invalidate(self, used: str) -> bool:
        return False

    def __repr__(self) -> str:
        return "LegacyToken(<secret>)"


class PersonalAccessToken:
    """A personal access token (a JWT refresh token), exchanged for short-lived access tokens.

    The access token is refreshed before it expires (``margin`` seconds early, or half its lifetime when that
    is shorter) and after Label Studio rejects it. Its lifetime is Label Studio's own (``exp`` less ``iat``, both
    by Label Studio's clock), so a proxy whose clock is ahead does not refresh on every request.

    One exchange is in flight at a time, a task of its own. While the access token it is to replace has not
    expired, requests go on sending that one and do not wait for it (a refresh endpoint that hangs or fails costs
    them nothing); past that, they wait for it, and a request that stops waiting (its deadline) does not stop it.
    For :data:`REFRESH_RETRY_AFTER` after one failed, no other starts: requests that need a new token get its
    failure.
    """

    def __init__(
        self,
        refresh_token: SecretStr,
        *,
        session: aiohttp.ClientSession,
        refresh_url: URL,
        timeout: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        margin: float = 30.0,
    ) -> None:
        self._refresh_token = refresh_token
        self._session = session
        self._refresh_url = refresh_url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._metrics = metrics
        self._clock = clock  # wall-clock seconds, as the tokens' exp
        self._monotonic = monotonic
        self._margin = margin
        self._access: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._exchange_task: asyncio.Task[str] | None = None
        self._failed: UpstreamError | None = None  # the last exchange's failure, until _retry_at (monotonic)
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return "PersonalAccessToken(<secret>)"

    def _current(self) -> str | None:
        if self._access is not None and self._clock() < self._refresh_at:
            return self._access
        return None

    async def authorization(self) -> str:
        access = self._current()
        if access is None and self._access is not None and self._clock() < self._expires_at:
            access = self._access  # due, not expired: renewed in the background meanwhile
            if not self._exchanging() and not self._failed_lately():
                self._start_exchange()
        return f"Bearer {access or await self._exchanged()}"

    async def _exchanged(self) -> str:
        """The access token of the exchange in flight, or of a new one; within REFRESH_RETRY_AFTER of a failed
        exchange, that failure. Only the request that started an exchange gets its failure itself: the others
        get a copy, which the breaker does not count again."""
        task = self._exchange_task
        joined = task is not None and not task.done()
        if task is None or task.done():
            if self._failed is not None and self._failed_lately():
                raise _repeated(self._failed)
            task = self._start_exchange()
        try:
            return await asyncio.shield(task)
        except TokenRefreshFailed as exc:
            if joined:
                raise _repeated(exc) from exc
            raise

    def _exchanging(self) -> bool:
        return self._exchange_task is not None and not self._exchange_task.done()

    def _failed_lately(self) -> bool:
        return self._failed is not None and self._monotonic() < self._retry_at

    def _start_exchange(self) -> asyncio.Task[str]:
        task = self._exchange_task = asyncio.create_task(self._refresh(), name="token-refresh")
        task.add_done_callback(_retrieved)
        return task

    def invalidate(self, used: str) -> bool:
        if self._access is not None and used == f"Bearer {self._access}":
            self._access = None
        return True

    async def _refresh(self) -> str:
        try:
            access = await self._exchange()
        except UpstreamError as exc:
            self._failed, self._retry_at = exc, self._monotonic() + REFRESH_RETRY_AFTER
            outcome = "rejected" if isinstance(exc, UpstreamAuthRejected) else "error"
            self._metrics.token_refreshes.labels(outcome=outcome).inc()
            raise
        self._failed = None
        self._metrics.token_refreshes.labels(outcome="ok").inc()
        return access

    async def _exchange(self) -> str:
        now = self._clock()
        try:
            async with self._session.post(
                self._refresh_url,
                json={"refresh": self._refresh_token.get_secret_value()},
                headers={hdrs.ACCEPT: "application/json"},
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if response.status in (400, 401, 403):
                    log.error(
                        "label studio rejected the personal access token",
                        extra={"upstream_status": response.status},
                    )
                    raise UpstreamAuthRejected(upstream_status=response.status)
                if response.status != 200:
                    # Not the annotation's status: Cache-Status's fwd-status stays for what the GET answered.
                    raise TokenRefreshFailed(f"Label Studio answered HTTP {response.status} to the token refresh.")
                body = await read_at_most(response, REFRESH_BODY_LIMIT)  # never more of it in memory
                payload = json.loads(body) if body is not None else None
        except TimeoutError as exc:  # before ClientError: ServerTimeoutError is both
            raise TokenRefreshFailed("Label Studio did not answer the token refresh in time.") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise TokenRefreshFailed("The token refresh with Label Studio failed.") from exc

        access = payload.get("access") if isinstance(payload, dict) else None
        claims = jwt_claims(access) if isinstance(access, str) else None
        if not isinstance(access, str) or claims is None or not _usable_header_value(access):
            raise TokenRefreshFailed("Label Studio's token refresh returned no access token.")
        lifetime = _lifetime(claims, now)
        self._access = access
        self._refresh_at = now + max(0.0, lifetime - min(self._margin, lifetime / 2))
        self._expires_at = now + lifetime
        return access


def _lifetime(claims: dict[str, object], now: float) -> float:
    """Seconds an access token is good for: ``exp`` less ``iat`` (both Label Studio's clock); ``exp`` less the
    proxy's ``now`` without an ``iat``; :data:`DEFAULT_LIFETIME` without an ``exp``."""
    exp, iat = claims.get("exp"), claims.get("iat")
    if not _seconds(exp):
        return DEFAULT_LIFETIME
    if _seconds(iat) and iat < exp:
        return float(exp) - float(iat)
    return float(exp) - now


def _seconds(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _repeated(failure: UpstreamError) -> UpstreamError:
    """``failure`` once more, for a request that came while the proxy waits before exchanging again: a copy (one
    failure answers many requests), which the breaker does not count again."""
    again = copy.copy(failure)
    if isinstance(again, TokenRefreshFailed):
        again.repeated = True
    return again


def _retrieved(task: asyncio.Task[str]) -> None:
    """Retrieve an exchange's failure, so that one whose requests all stopped waiting logs no warning."""
    if not task.cancelled():
        task.exception()


def _usable_header_value(token: str) -> bool:
    return token.isascii() and token.isprintable() and not any(c.isspace() for c in token)

"""The proxy's own credentials for Label Studio: a legacy ``Token`` key, or a personal access token exchanged for
short-lived access tokens (refreshed before they expire, and once more after a 401).

The only holder of the token besides :mod:`proxy.upstream`, which asks for an ``Authorization`` value per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
from aiohttp import hdrs
from pydantic import SecretStr
from yarl import URL

from proxy.errors import UpstreamAuthRejected, UpstreamBadStatus, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from proxy.exchange import read_at_most
from proxy.metrics import Metrics
from proxy.tokens import jwt_claims

log = logging.getLogger("proxy.upstream")

TOKEN_REFRESH_PATH = "api/token/refresh/"  # noqa: S105 - a path, not a secret
# The refresh's answer is one access token (a JWT of a few hundred bytes); past this, it is not read further.
REFRESH_BODY_LIMIT = 64 * 1024


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
    is shorter) and after Label Studio rejects it. One exchange is in flight at a time: concurrent requests
    wait for it instead of each starting their own.
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
        margin: float = 30.0,
    ) -> None:
        self._refresh_token = refresh_token
        self._session = session
        self._refresh_url = refresh_url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._metrics = metrics
        self._clock = clock
        self._margin = margin
        self._access: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "PersonalAccessToken(<secret>)"

    def _current(self) -> str | None:
        if self._access is not None and self._clock() < self._refresh_at:
            return self._access
        return None

    async def authorization(self) -> str:
        access = self._current()
        if access is None:
            async with self._lock:
                access = self._current() or await self._refresh()
        return f"Bearer {access}"

    def invalidate(self, used: str) -> bool:
        if self._access is not None and used == f"Bearer {self._access}":
            self._access = None
        return True

    async def _refresh(self) -> str:
        try:
            access = await self._exchange()
        except UpstreamAuthRejected:
            self._metrics.token_refreshes.labels(outcome="rejected").inc()
            raise
        except UpstreamError:
            self._metrics.token_refreshes.labels(outcome="error").inc()
            raise
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
                    raise UpstreamBadStatus(
                        f"Label Studio answered HTTP {response.status} to the token refresh.",
                        upstream_status=response.status,
                    )
                body = await read_at_most(response, REFRESH_BODY_LIMIT)  # never more of it in memory
                payload = json.loads(body) if body is not None else None
        except TimeoutError as exc:  # before ClientError: ServerTimeoutError is both
            raise UpstreamTimeout("Label Studio did not answer the token refresh in time.") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise UpstreamUnavailable("The token refresh with Label Studio failed.") from exc

        access = payload.get("access") if isinstance(payload, dict) else None
        claims = jwt_claims(access) if isinstance(access, str) else None
        if not isinstance(access, str) or claims is None or not _usable_header_value(access):
            raise UpstreamBadStatus("Label Studio's token refresh returned no access token.")
        exp = claims.get("exp")
        lifetime = float(exp) - now if isinstance(exp, int | float) else 60.0
        self._access = access
        self._refresh_at = now + max(0.0, lifetime - min(self._margin, lifetime / 2))
        return access


def _usable_header_value(token: str) -> bool:
    return token.isascii() and token.isprintable() and not any(c.isspace() for c in token)

"""The Label Studio client: the only code that talks to Label Studio, and the only holder of its token.

Requests upstream are built from scratch: nothing of the caller's request (its ``Authorization``, cookies,
other headers, query string) is forwarded, only the annotation id, the expand flag and a sane request id.
Nothing of Label Studio's response headers (its ``Set-Cookie`` session for the token's user above all) is
returned to callers either: the service only takes the status and the body from here.

aiohttp's exceptions are translated into :mod:`proxy.errors` here, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import hdrs
from pydantic import SecretStr
from yarl import URL

from proxy.breaker import CircuitBreaker
from proxy.budget import BODY_FACTOR, ByteBudget, Lease
from proxy.errors import (
    InvalidUpstreamBody,
    ProxyBusy,
    UpstreamAuthRejected,
    UpstreamBadStatus,
    UpstreamCircuitOpen,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.metrics import Metrics
from proxy.tokens import jwt_claims

log = logging.getLogger("proxy.upstream")

ANNOTATION_PATH = "api/annotations/{id}/"
TOKEN_REFRESH_PATH = "api/token/refresh/"  # noqa: S105 - a path, not a secret
# Readiness asks for annotation 0, which never exists: Label Studio checks credentials before the lookup, so a
# 404 proves they are accepted, with no other endpoint involved.
PROBE_ANNOTATION_ID = 0
NOT_FOUND_BODY_LIMIT = 64 * 1024


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
                payload = await response.json(content_type=None)
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


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """What the proxy keeps of Label Studio's answer: a status and, for a 200, the body bytes.

    A 200's body holds its share of the memory budget (``lease``) until the caller has validated it and calls
    :meth:`release`.
    """

    status: int
    body: bytes = b""
    lease: Lease | None = None

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


@dataclass(frozen=True)
class UpstreamPolicy:
    """How hard the proxy leans on Label Studio."""

    timeout: float  # seconds for a whole lookup: queueing, every attempt and the pauses between them
    max_connections: int  # requests in flight at once; more wait their turn (within the timeout)
    retries: int = 2  # after a connection error or a 502/503/504
    backoff: float = 0.05  # first pause before a retry, doubling, with full jitter
    max_backoff: float = 1.0


RETRYABLE_STATUSES = frozenset({502, 503, 504})
MAX_FAILING_IDS = 1024


class LabelStudioClient:
    """Fetches annotations from Label Studio over one shared ``ClientSession``.

    Protects Label Studio and the proxy alike: at most ``max_connections`` requests in flight, a few jittered
    retries of what may pass (a refused connection, a 502/503/504) within the lookup's deadline, and a circuit
    breaker that stops calling a Label Studio that keeps failing, letting single probes through.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: URL,
        credentials: Credentials,
        *,
        policy: UpstreamPolicy,
        breaker: CircuitBreaker,
        metrics: Metrics,
        max_body_bytes: int,
        user_agent: str,
        bodies: ByteBudget | None = None,
    ) -> None:
        self._session = session
        self._base_url = base_url if base_url.path.endswith("/") else base_url.with_path(base_url.path + "/")
        self._credentials = credentials
        self._policy = policy
        self._breaker = breaker
        self._slots = asyncio.Semaphore(policy.max_connections)
        # Ids whose 5xx (other than 502/503/504) the breaker has counted since the last success: bounded by the
        # breaker's threshold, since that many distinct ids open it.
        self._failing_ids: set[int] = set()
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._user_agent = user_agent
        # Bodies being read and validated, in bytes of memory (proxy/budget.py); unbounded when None (tests).
        self._bodies = bodies

    def annotation_url(self, annotation_id: int, *, expand: bool) -> URL:
        url = self._base_url.join(URL(ANNOTATION_PATH.format(id=annotation_id)))
        return url.with_query(expand="completed_by") if expand else url

    async def fetch_annotation(self, annotation_id: int, *, expand: bool, request_id: str) -> UpstreamReply:
        """Label Studio's answer for one annotation: 200 with the body, or 404.

        Raises an :class:`UpstreamError` for everything else: after the retries the policy allows, and after one
        retry with fresh credentials when a personal access token was rejected.
        """
        url = self.annotation_url(annotation_id, expand=expand)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._policy.timeout
        retries = 0
        credentials_renewed = False
        while True:
            waiting = _MemoryWait()
            try:
                async with asyncio.timeout_at(deadline):
                    reply, authorization = await self._attempt(annotation_id, url, request_id, waiting)
            except TimeoutError as exc:  # the deadline passed while waiting for a slot, an answer or memory
                if waiting.active:  # Label Studio answered; the proxy had no room for the body in time
                    raise ProxyBusy() from exc
                self._breaker.failed()
                raise UpstreamTimeout() from exc
            except UpstreamUnavailable as exc:
                if not self._retry_allowed(retries, deadline, exc):
                    raise
            else:
                if reply.status in (401, 403):
                    if not credentials_renewed and self._credentials.invalidate(authorization):
                        credentials_renewed = True
                        continue
                    raise UpstreamAuthRejected(upstream_status=reply.status)
                if reply.status in (200, 404):
                    return reply
                error = _status_error(reply.status)
                if reply.status not in RETRYABLE_STATUSES or not self._retry_allowed(retries, deadline, error):
                    raise error
            retries += 1
            self._metrics.upstream_retries.inc()
            await asyncio.sleep(self._pause(retries))

    async def check_credentials(self, request_id: str) -> None:
        """Raise unless Label Studio answers and accepts the proxy's credentials (the background dependency
        check, proxy/readiness.py).

        One request for an id that never exists (a second after renewing a rejected access token), outside the
        breaker, the connection slots, the retries and the annotation metrics: the check watches Label Studio,
        it is not annotation traffic, and it must see a recovered Label Studio while the breaker is still open.
        """
        url = self.annotation_url(PROBE_ANNOTATION_ID, expand=False)
        authorization = await self._credentials.authorization()
        reply = await self._get(url, authorization, request_id, counted=False)
        if reply.status in (401, 403) and self._credentials.invalidate(authorization):
            reply = await self._get(url, await self._credentials.authorization(), request_id, counted=False)
        if reply.status in (401, 403):
            raise UpstreamAuthRejected(upstream_status=reply.status)
        if reply.status != 404:
            raise UpstreamBadStatus(
                f"Label Studio answered HTTP {reply.status} to the check.", upstream_status=reply.status
            )

    async def _attempt(
        self, annotation_id: int, url: URL, request_id: str, waiting: _MemoryWait
    ) -> tuple[UpstreamReply, str]:
        """One request, through the breaker and a connection slot: the reply and the ``Authorization`` sent.

        The breaker hears how it went: no answer is a failure, a 5xx as :meth:`_tell_breaker` says, any other
        answer a success.
        """
        if not self._breaker.allow():
            raise UpstreamCircuitOpen()
        try:
            with self._metrics.upstream_waiting.track_inprogress():
                await self._slots.acquire()
            try:
                authorization = await self._credentials.authorization()
                reply = await self._get(url, authorization, request_id, waiting=waiting)
            finally:
                self._slots.release()
        except (UpstreamUnavailable, UpstreamTimeout):
            self._breaker.failed()
            raise
        except UpstreamError:  # Label Studio answered, if not usefully (a body too large, a foreign 404)
            self._breaker.succeeded()
            raise
        except BaseException:  # cancelled: by the caller, or by the deadline (then counted as a failure above)
            self._breaker.abandoned()
            raise
        self._tell_breaker(annotation_id, reply.status)
        return reply, authorization

    def _tell_breaker(self, annotation_id: int, status: int) -> None:
        """What an answer says of Label Studio as a whole.

        A 502/503/504 (a gateway, or Label Studio overloaded) is a failure of the whole. Any other 5xx may be one
        annotation that makes Label Studio fail (a bug on its side, or an id a caller picked to trip the
        breaker): it counts once per id until an answer succeeds, so the breaker opens when several ids fail,
        never when one id is asked for again and again. Every other answer is a success.
        """
        if status in RETRYABLE_STATUSES:
            self._breaker.failed()
        elif status >= 500:
            if annotation_id in self._failing_ids:
                self._breaker.abandoned()  # no verdict: a half-open probe lets the next call try
            else:
                if len(self._failing_ids) >= MAX_FAILING_IDS:  # a long outage of 500s, probed every cooldown
                    self._failing_ids.clear()
                self._failing_ids.add(annotation_id)
                self._breaker.failed()
        else:
            self._failing_ids.clear()
            self._breaker.succeeded()

    def _retry_allowed(self, retries: int, deadline: float, error: UpstreamError) -> bool:
        if isinstance(error, UpstreamCircuitOpen) or retries >= self._policy.retries:
            return False
        remaining = deadline - asyncio.get_running_loop().time()
        return remaining > self._pause_cap(retries + 1)

    def _pause_cap(self, retry: int) -> float:
        return min(self._policy.max_backoff, self._policy.backoff * 2.0 ** (retry - 1))

    def _pause(self, retry: int) -> float:
        pause: float = random.uniform(0, self._pause_cap(retry))  # noqa: S311 - jitter, not cryptography
        return pause

    async def _get(
        self,
        url: URL,
        authorization: str,
        request_id: str,
        *,
        counted: bool = True,
        waiting: _MemoryWait | None = None,
    ) -> UpstreamReply:
        headers = {
            hdrs.AUTHORIZATION: authorization,
            hdrs.ACCEPT: "application/json",
            hdrs.USER_AGENT: self._user_agent,
            "X-Request-ID": request_id,
        }
        outcome = "timeout"  # unless classified below: interrupted by the lookup's deadline
        started = time.perf_counter()
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as response:
                outcome = _outcome_of(response.status)
                if response.status == 404 and not await _is_label_studio_404(response):
                    outcome = "bad_status"
                    raise UpstreamBadStatus(
                        "Something other than Label Studio's API answered 404; operators: check LABEL_STUDIO_URL.",
                        upstream_status=404,
                    )
                if response.status != 200:
                    return UpstreamReply(response.status)
                lease = await self._room_for(response, waiting)
                try:
                    return UpstreamReply(200, await self._read_body(response), lease)
                except BaseException:
                    if lease is not None:
                        lease.release()
                    raise
        except TimeoutError as exc:  # before ClientError: ServerTimeoutError is both
            outcome = "timeout"
            raise UpstreamTimeout() from exc
        except aiohttp.ClientConnectorError as exc:
            outcome = "connection_error"
            raise UpstreamUnavailable() from exc
        except aiohttp.ClientError as exc:  # the connection broke after it was made
            outcome = "connection_error"
            raise UpstreamUnavailable("The connection to Label Studio failed during the response.") from exc
        except ValueError as exc:  # aiohttp refuses to send a header it cannot encode (an unusable token)
            outcome = "connection_error"
            raise UpstreamUnavailable("The request to Label Studio could not be sent.") from exc
        except InvalidUpstreamBody:
            outcome = "too_large"
            raise
        finally:
            if counted:
                self._metrics.upstream_requests.labels(outcome=outcome).inc()
                self._metrics.upstream_duration.observe(time.perf_counter() - started)

    async def _room_for(self, response: aiohttp.ClientResponse, waiting: _MemoryWait | None) -> Lease | None:
        """Reserve the memory the body will cost while it is read and validated (proxy/budget.py), before a byte
        of it is read: its Content-Length, or PROXY_MAX_BODY_BYTES when Label Studio does not say."""
        if self._bodies is None:
            return None
        length = response.content_length
        size = min(length if length is not None else self._max_body_bytes, self._max_body_bytes + 1)
        if waiting is not None:
            waiting.active = True
        lease = await self._bodies.lease(BODY_FACTOR * size)
        if waiting is not None:
            waiting.active = False
        return lease

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._max_body_bytes
        body = await _read_at_most(response, limit)
        if body is None:
            raise InvalidUpstreamBody(
                f"Label Studio returned an invalid annotation body: larger than {limit} bytes (PROXY_MAX_BODY_BYTES)."
            )
        return body


class _MemoryWait:
    """Whether a request is waiting for room in the memory budget (a timeout then is not Label Studio's)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = False


def _usable_header_value(token: str) -> bool:
    return token.isascii() and token.isprintable() and not any(c.isspace() for c in token)


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None as soon as it proves longer than ``limit`` bytes (never buffered past it)."""
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _is_label_studio_404(response: aiohttp.ClientResponse) -> bool:
    """Label Studio's "not found" is its JSON error shape; a proxy's or web server's HTML 404 is not one."""
    if response.content_type != "application/json":
        return False
    body = await _read_at_most(response, NOT_FOUND_BODY_LIMIT)
    try:
        error = json.loads(body) if body is not None else None
    except ValueError:
        return False
    return isinstance(error, dict) and error.get("status_code") == 404 and "detail" in error


def _outcome_of(status: int) -> str:
    if status == 200:
        return "ok"
    if status == 404:
        return "not_found"
    if status in (401, 403):
        return "auth_rejected"
    return "bad_status"


__all__ = [
    "Credentials",
    "LabelStudioClient",
    "LegacyToken",
    "PersonalAccessToken",
    "UpstreamError",
    "UpstreamReply",
]


def _status_error(status: int) -> UpstreamBadStatus:
    if 300 <= status < 400:
        return UpstreamBadStatus(
            f"Label Studio answered with a redirect (HTTP {status}); operators: check LABEL_STUDIO_URL.",
            upstream_status=status,
        )
    return UpstreamBadStatus(f"Label Studio answered HTTP {status}.", upstream_status=status)

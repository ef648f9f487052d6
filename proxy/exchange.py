"""One HTTP exchange with Label Studio for an annotation: the request built from scratch, the answer classified
(``annotation_proxy_upstream_requests_total{outcome}``), the body read within PROXY_MAX_BODY_BYTES and within the
memory budget. The policy of asking (retries, the breaker, connection slots, credentials) is
:class:`proxy.upstream.LabelStudioClient`'s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs
from yarl import URL

from proxy.budget import BODY_FACTOR, ByteBudget, Lease
from proxy.errors import InvalidUpstreamBody, UpstreamBadStatus, UpstreamTimeout, UpstreamUnavailable
from proxy.metrics import Metrics, UpstreamOutcome

NOT_FOUND_BODY_LIMIT = 64 * 1024


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


class Exchange:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        max_body_bytes: int,
        user_agent: str,
        bodies: ByteBudget | None,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._outcomes = metrics.upstream_outcomes
        self._max_body_bytes = max_body_bytes
        self._user_agent = user_agent
        # Bodies being read and validated, in bytes of memory (proxy/budget.py); unbounded when None (tests).
        self._bodies = bodies

    async def get(
        self,
        url: URL,
        authorization: str,
        request_id: str,
        *,
        counted: bool = True,
        waiting: MemoryWait | None = None,
    ) -> UpstreamReply:
        headers = {
            hdrs.AUTHORIZATION: authorization,
            hdrs.ACCEPT: "application/json",
            hdrs.USER_AGENT: self._user_agent,
            "X-Request-ID": request_id,
        }
        outcome: UpstreamOutcome = "timeout"  # unless classified below: interrupted by the lookup's deadline
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
                self._outcomes[outcome].inc()
                self._metrics.upstream_duration.observe(time.perf_counter() - started)

    async def _room_for(self, response: aiohttp.ClientResponse, waiting: MemoryWait | None) -> Lease | None:
        """Reserve the memory the body will cost while it is read and validated (proxy/budget.py), before a byte
        of it is read: its Content-Length, or PROXY_MAX_BODY_BYTES when Label Studio does not say or the body is
        encoded anyway (an intermediary that compresses whatever the proxy asked for), which its length on the
        wire does not bound."""
        if self._bodies is None:
            return None
        length = response.content_length
        if length is None or is_encoded(response):
            length = self._max_body_bytes
        size = min(length, self._max_body_bytes + 1)
        if waiting is not None:
            waiting.active = True
        lease = await self._bodies.lease(BODY_FACTOR * size)
        if waiting is not None:
            waiting.active = False
        return lease

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._max_body_bytes
        body = await read_at_most(response, limit)
        if body is None:
            raise InvalidUpstreamBody(
                f"Label Studio returned an invalid annotation body: larger than {limit} bytes (PROXY_MAX_BODY_BYTES)."
            )
        return body


class MemoryWait:
    """Whether a request is waiting for room in the memory budget (a timeout then is not Label Studio's)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = False


def is_encoded(response: aiohttp.ClientResponse) -> bool:
    """Whether the body comes in a content coding (``identity``, or an empty header, is none): the session asks for
    none (proxy/app.py), an intermediary may compress anyway."""
    return response.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() not in ("", "identity")


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None as soon as it proves longer than ``limit`` bytes (never buffered past it). A plain
    body whose ``Content-Length`` says it fits is read in one call (aiohttp's parser never reads past that length);
    an encoded one is counted as it inflates, whatever its length on the wire."""
    length = response.content_length
    if length is not None and length > limit:
        return None
    if length is not None and not is_encoded(response):
        return await response.read()
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
    body = await read_at_most(response, NOT_FOUND_BODY_LIMIT)
    try:
        error = json.loads(body) if body is not None else None
    except ValueError:
        return False
    return isinstance(error, dict) and error.get("status_code") == 404 and "detail" in error


def _outcome_of(status: int) -> UpstreamOutcome:
    if status == 200:
        return "ok"
    if status == 404:
        return "not_found"
    if status in (401, 403):
        return "auth_rejected"
    return "bad_status"

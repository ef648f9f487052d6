"""The Label Studio client: the only code that talks to Label Studio, and the only holder of its token.

Requests upstream are built from scratch: nothing of the caller's request (its ``Authorization``, cookies,
other headers, query string) is forwarded, only the annotation id, the expand flag and a sane request id.
Nothing of Label Studio's response headers (its ``Set-Cookie`` session for the token's user above all) is
returned to callers either: the service only takes the status and the body from here.

aiohttp's exceptions are translated into :mod:`proxy.errors` here, once.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import aiohttp
from yarl import URL

from proxy.breaker import CircuitBreaker, Verdict
from proxy.budget import ByteBudget
from proxy.credentials import Credentials
from proxy.errors import (
    GATEWAY_STATUSES,
    ProxyBusy,
    TokenRefreshFailed,
    UpstreamAuthRejected,
    UpstreamBadStatus,
    UpstreamCircuitOpen,
    UpstreamError,
    UpstreamQueueTimeout,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.exchange import Exchange, MemoryWait, UpstreamReply
from proxy.metrics import Metrics
from proxy.upstream_queue import SlotWait, UpstreamQueue

ANNOTATIONS_PATH = "api/annotations/"  # below LABEL_STUDIO_URL, which may have a path of its own
# Readiness asks for annotation 0, which never exists: Label Studio checks credentials before the lookup, so a
# 404 proves they are accepted, with no other endpoint involved.
PROBE_ANNOTATION_ID = 0


@dataclass(frozen=True)
class UpstreamPolicy:
    """How hard the proxy leans on Label Studio."""

    timeout: float  # seconds for a whole lookup: queueing, every attempt and the pauses between them
    max_connections: int  # requests in flight at once; more wait their turn (within the timeout)
    retries: int = 2  # after a connection error or a 502/503/504
    backoff: float = 0.05  # first pause before a retry, doubling, with full jitter
    max_backoff: float = 1.0

    def retry_allowed(self, retries: int, remaining: float, error: UpstreamError) -> bool:
        """Whether ``error`` after ``retries`` retries may be retried with ``remaining`` seconds of the deadline."""
        if isinstance(error, UpstreamCircuitOpen) or retries >= self.retries:
            return False
        return remaining > self.pause_cap(retries + 1)

    def pause_cap(self, retry: int) -> float:
        return min(self.max_backoff, self.backoff * 2.0 ** (retry - 1))

    def pause(self, retry: int) -> float:
        pause: float = random.uniform(0, self.pause_cap(retry))  # noqa: S311 - jitter, not cryptography
        return pause


MAX_FAILING_IDS = 1024


class FailingIds:
    """Ids whose failure (a 5xx other than 502/503/504, or a timeout) the breaker counted since Label Studio's
    last success: each id counts once, so the breaker opens when several ids fail, never when one id is asked for
    again and again (a bug on Label Studio's side, or an id a caller picked to trip the breaker). At most its
    threshold's worth between successes; cleared past MAX_FAILING_IDS in a long outage, probed every cooldown."""

    def __init__(self) -> None:
        self._ids: set[int] = set()

    def first(self, annotation_id: int) -> bool:
        """Whether this is the id's first failure since the last success (and remember it)."""
        if annotation_id in self._ids:
            return False
        if len(self._ids) >= MAX_FAILING_IDS:
            self._ids.clear()
        self._ids.add(annotation_id)
        return True

    def clear(self) -> None:
        self._ids.clear()

    def tell(self, verdict: Verdict, annotation_id: int, status: int) -> None:
        """What an answer says of Label Studio as a whole. A 502/503/504 (a gateway, or Label Studio overloaded) is
        a failure of the whole; any other 5xx may be one annotation that makes Label Studio fail, and counts once
        per id; every other answer is a success."""
        if status in GATEWAY_STATUSES:
            verdict.failed()
        elif status >= 500:
            if self.first(annotation_id):
                verdict.failed()
            else:
                verdict.abandoned()  # no verdict: a half-open probe lets the next call try
        else:
            self.clear()
            verdict.succeeded()


class LabelStudioClient:
    """Fetches annotations from Label Studio over one shared ``ClientSession``.

    Protects Label Studio and the proxy alike: at most ``max_connections`` requests in flight, a few jittered
    retries of what may pass (a refused connection, a 502/503/504) within the lookup's deadline, and a circuit
    breaker that stops calling a Label Studio that keeps failing, letting single probes through. ``base_url``:
    Label Studio's, ending with a slash (``LABEL_STUDIO_URL`` as proxy/settings.py gives it).
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
        # Annotation URLs as strings below the encoded base, taken as they are (no join, no quoting per request).
        self._annotations = str(base_url.join(URL(ANNOTATIONS_PATH)))
        self._credentials = credentials
        self._policy = policy
        self._breaker = breaker
        self._queue = UpstreamQueue(policy.max_connections, metrics)  # connections shared in turn between callers
        self._failing_ids = FailingIds()
        self._metrics = metrics
        self._exchange = Exchange(session, metrics, max_body_bytes=max_body_bytes, user_agent=user_agent, bodies=bodies)

    def annotation_url(self, annotation_id: int, *, expand: bool) -> URL:
        query = "?expand=completed_by" if expand else ""
        return URL(f"{self._annotations}{annotation_id}/{query}", encoded=True)

    async def fetch_annotation(self, annotation_id: int, *, expand: bool, request_id: str) -> UpstreamReply:
        """Label Studio's answer for one annotation: 200 with the body, or 404.

        Raises an :class:`UpstreamError` for everything else: after the retries the policy allows, and after one
        retry with fresh credentials when a personal access token was rejected.
        """
        url = self.annotation_url(annotation_id, expand=expand)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._policy.timeout
        retries, credentials_renewed = 0, False
        while True:
            waiting, queued = MemoryWait(), SlotWait(deadline, waited=retries > 0 or credentials_renewed)
            try:
                async with asyncio.timeout_at(deadline):
                    reply, authorization = await self._attempt(annotation_id, url, request_id, waiting, queued)
            except TimeoutError as exc:  # the deadline passed while waiting for a slot, an answer or memory
                if waiting.active:  # Label Studio answered; the proxy had no room for the body in time
                    raise ProxyBusy() from exc
                if queued.sent_at is None:  # never sent: the proxy's own queue outlasted the deadline
                    raise UpstreamQueueTimeout() from exc
                silent = self._queue.silent_for(self._policy.timeout)
                if (silent or not queued.waited) and self._failing_ids.first(annotation_id):
                    self._breaker.failed()  # a request with its whole deadline, or nobody answered for as long
                raise UpstreamTimeout() from exc
            except UpstreamUnavailable as exc:
                if not self._policy.retry_allowed(retries, deadline - loop.time(), exc):
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
                if reply.status not in GATEWAY_STATUSES or not self._policy.retry_allowed(
                    retries, deadline - loop.time(), error
                ):
                    raise error
            retries += 1
            self._metrics.upstream_retries.inc()
            await asyncio.sleep(self._policy.pause(retries))

    async def check_credentials(self, request_id: str) -> None:
        """Raise unless Label Studio answers and accepts the proxy's credentials (the background dependency
        check, proxy/readiness.py).

        One request for an id that never exists (a second after renewing a rejected access token), outside the
        breaker, the connection slots, the retries and the annotation metrics: the check watches Label Studio,
        it is not annotation traffic, and it must see a recovered Label Studio while the breaker is still open.
        Its success closes a breaker past its cooldown that no call has probed (a replica serving only hits).
        """
        url = self.annotation_url(PROBE_ANNOTATION_ID, expand=False)
        authorization = await self._credentials.authorization()
        reply = await self._exchange.get(url, authorization, request_id, counted=False)
        reply.release()  # only its status matters: a 200's body gives its share of the memory budget back
        if reply.status in (401, 403) and self._credentials.invalidate(authorization):
            reply = await self._exchange.get(url, await self._credentials.authorization(), request_id, counted=False)
            reply.release()
        if reply.status in (401, 403):
            raise UpstreamAuthRejected(upstream_status=reply.status)
        if reply.status != 404:
            raise UpstreamBadStatus(
                f"Label Studio answered HTTP {reply.status} to the check.", upstream_status=reply.status
            )
        if self._breaker.answered_elsewhere():
            self._failing_ids.clear()  # an answer, as FailingIds.tell takes a success

    async def _attempt(
        self, annotation_id: int, url: URL, request_id: str, waiting: MemoryWait, queued: SlotWait
    ) -> tuple[UpstreamReply, str]:
        """One request, through the breaker and a connection slot: the reply and the ``Authorization`` sent.

        The breaker hears how it went: no answer is a failure, a 5xx as :meth:`FailingIds.tell` says, any other
        answer a success. One that waited for its slot and has less time left than Label Studio's slowest recent
        answer to this caller took is not sent (a 503, no verdict): it could not be answered in time, and sending
        it would fill the connections with requests abandoned before Label Studio finishes them.
        """
        # No answer is a failure; an answer that is not useful (a body too large, a foreign 404) a success; a
        # cancellation (by the caller, or by the deadline: counted as a failure by fetch_annotation) no verdict.
        with self._breaker.guard(
            UpstreamCircuitOpen, failures=(UpstreamUnavailable, UpstreamTimeout), answers=(UpstreamError,)
        ) as verdict:
            sent_at = await self._queue.enter(queued)
            if sent_at is None:
                verdict.abandoned()
                raise UpstreamQueueTimeout()
            try:
                authorization = await self._authorization(verdict)
                reply = await self._exchange.get(url, authorization, request_id, waiting=waiting)
                self._queue.answered(sent_at)
            finally:
                self._queue.leave()
            self._failing_ids.tell(verdict, annotation_id, reply.status)
        return reply, authorization

    async def _authorization(self, verdict: Verdict) -> str:
        """The ``Authorization`` to send. A failed token exchange is Label Studio failing, counted once: a request
        answered with the failure of an exchange another request made gives no verdict."""
        try:
            return await self._credentials.authorization()
        except TokenRefreshFailed as exc:
            if exc.repeated:
                verdict.abandoned()
            raise


def _status_error(status: int) -> UpstreamBadStatus:
    if 300 <= status < 400:
        return UpstreamBadStatus(
            f"Label Studio answered with a redirect (HTTP {status}); operators: check LABEL_STUDIO_URL.",
            upstream_status=status,
        )
    return UpstreamBadStatus(f"Label Studio answered HTTP {status}.", upstream_status=status)

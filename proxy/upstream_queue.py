"""The proxy's queue for Label Studio's connections: slots taken in turn by the callers (:mod:`proxy.fair_slots`),
and what the queue learns of Label Studio's pace. That decides two things for a request that waited for its slot
(:mod:`proxy.upstream`):

- whether it is still worth sending: not when less time is left than Label Studio's slowest recent answer to its
  caller took. Sending it would fill the connections with requests abandoned before Label Studio finishes them.
  That maximum fades with each later answer or refusal, so one slow id never locks a key out; it is per caller (a
  client key's number), so one key's slow ids set no one else's;
- whether its timeout says anything of Label Studio: only once Label Studio has answered nothing for a whole
  timeout (a caller flooding the queue while Label Studio answers others must not open the breaker for everyone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from proxy.fair_slots import CALLER, FairSlots
from proxy.metrics import Metrics

SLOWEST_DECAY = 0.9  # per answer or refusal: a slow answer's weight in what a waiting request needs left fades


class SlotWait:
    """Whether an attempt waited for its connection slot, and when it got one (loop time; None until then).

    What its timeout says: one that never waited had its whole deadline at Label Studio. One that waited had
    only what the proxy's own queue left (a second attempt, a retry or one after renewing rejected credentials,
    only what the first left), and says nothing of Label Studio while Label Studio answers others, but does once
    Label Studio has answered nothing for a whole timeout (a hang under load, or with fewer connections than the
    breaker's threshold)."""

    __slots__ = ("deadline", "sent_at", "waited")

    def __init__(self, deadline: float, *, waited: bool) -> None:
        self.deadline = deadline
        self.sent_at: float | None = None
        self.waited = waited


class UpstreamQueue:
    def __init__(self, max_connections: int, metrics: Metrics) -> None:
        self._slots = FairSlots(max_connections)
        self._metrics = metrics
        self._answered_at = 0.0  # loop time of Label Studio's last answer to an annotation request
        self._slowest: dict[Hashable, float] = {}  # per caller: seconds its slowest recent answer took

    async def enter(self, queued: SlotWait) -> float | None:
        """Take a connection slot for ``queued``'s attempt, for the current caller (:data:`CALLER`): the loop time
        it goes out at. None, with no slot held, when it waited and has less time left than Label Studio's
        slowest recent answer to the caller took."""
        loop, caller = asyncio.get_running_loop(), CALLER.get()
        slowest = self._slowest.get(caller, 0.0)
        if self._slots.locked():  # only a request that waits for a slot is counted as waiting
            queued.waited = True
            with self._metrics.upstream_waiting.track_inprogress():
                await self._slots.acquire()
            if queued.deadline - loop.time() < slowest:
                self._slowest[caller] = slowest * SLOWEST_DECAY  # fades with refusals too: never a lockout
                self._slots.release()
                return None
        else:
            await self._slots.acquire()  # free: taken at once
        queued.sent_at = loop.time()
        return queued.sent_at

    def answered(self, sent_at: float) -> None:
        """Label Studio answered the current caller's attempt sent at ``sent_at`` (before :meth:`leave`)."""
        self._answered_at = asyncio.get_running_loop().time()
        caller = CALLER.get()
        self._slowest[caller] = max(self._answered_at - sent_at, self._slowest.get(caller, 0.0) * SLOWEST_DECAY)

    def leave(self) -> None:
        """Give the attempt's slot back: to the next caller in turn."""
        self._slots.release()

    def silent_for(self, seconds: float) -> bool:
        """Whether Label Studio has answered no annotation request for the last ``seconds``."""
        return asyncio.get_running_loop().time() - self._answered_at >= seconds

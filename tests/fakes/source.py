"""A scripted stand-in for the Label Studio client, for unit tests of the service alone.

Each call to ``fetch_annotation`` takes the next scripted reply for its key (or raises the scripted error),
after waiting for the key's gate when the test closed it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass, field

from proxy.exchange import UpstreamReply


@dataclass
class ScriptedSource:
    replies: dict[tuple[int, bool], deque[UpstreamReply | Exception]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    gates: dict[tuple[int, bool], asyncio.Event] = field(default_factory=dict)
    calls: list[tuple[int, bool]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, annotation_id: int, *replies: UpstreamReply | Exception, expand: bool = False) -> None:
        self.replies[(annotation_id, expand)].extend(replies)

    def close_gate(self, annotation_id: int, *, expand: bool = False) -> asyncio.Event:
        gate = asyncio.Event()
        self.gates[(annotation_id, expand)] = gate
        return gate

    async def fetch_annotation(self, annotation_id: int, *, expand: bool, request_id: str) -> UpstreamReply:
        key = (annotation_id, expand)
        self.calls.append(key)
        self.arrived.set()
        reply = self.replies[key].popleft()  # taken on arrival, so the order of calls decides
        gate = self.gates.get(key)
        if gate is not None:
            await gate.wait()
        if isinstance(reply, Exception):
            raise reply
        return reply

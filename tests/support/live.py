"""A live proxy for synchronous tests (hypothesis, schemathesis): real sockets, served from another thread.

``running_proxy()`` starts the fake Label Studio and the proxy in front of it on free 127.0.0.1 ports, in a
background thread with its own event loop, and stops both on exit. ``Live.run(coro)`` runs a coroutine on that
loop and waits for its result, so a synchronous test can drive async clients against the proxy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from proxy.app import create_app
from proxy.server import ProxyRunner
from proxy.settings import Settings
from tests.fakes.label_studio import FakeLabelStudio
from tests.support.proxies import CLIENT_KEY

T = TypeVar("T")
TIMEOUT = 30.0


@dataclass
class Live:
    url: str
    host: str
    port: int
    fake: FakeLabelStudio
    settings: Settings
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def running_proxy(annotations: int = 3, **overrides: Any) -> Iterator[Live]:
    """The proxy (memory cache, ``CLIENT_KEY``) in front of a fake with ``annotations`` annotations (ids 1..n).

    Keyword arguments are Settings fields that replace the defaults.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="live-proxy", daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    async def start() -> Live:
        fake = FakeLabelStudio()
        for _ in range(annotations):
            fake.add_annotation()
        upstream = web.AppRunner(fake.app())
        await upstream.setup()
        runners.append(upstream)
        await web.TCPSite(upstream, "127.0.0.1", 0).start()
        fields: dict[str, Any] = {
            "label_studio_url": f"http://127.0.0.1:{upstream.addresses[0][1]}/",
            "label_studio_api_key": fake.legacy_token,
            "proxy_client_keys": (CLIENT_KEY,),
            "redis_url": None,
        }
        fields.update(overrides)
        settings = Settings(**fields)
        proxy = ProxyRunner(create_app(settings))
        await proxy.setup()
        runners.insert(0, proxy)
        await web.TCPSite(proxy, "127.0.0.1", 0).start()
        host, port = proxy.addresses[0][:2]
        return Live(f"http://{host}:{port}", host, port, fake, settings, loop)

    async def stop() -> None:
        for runner in runners:
            await runner.cleanup()

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(TIMEOUT)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()

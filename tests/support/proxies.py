"""The proxy in-process, under aiohttp's test server: the client key the tests use, the ``Proxy`` the
``make_proxy`` fixture (tests/conftest.py) starts, and the types of aiohttp's server and client fixtures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from proxy.server import ProxyRunner
from proxy.settings import Settings
from tests.fakes.label_studio import FakeLabelStudio

CLIENT_KEY = "client-key-for-tests-0123456789"

ClientFactory = Callable[[web.Application | TestServer], Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


class ProxyTestServer(TestServer):
    """aiohttp's test server with the proxy's own runner (proxy/server.py), as ``python -m proxy`` serves it:
    annotation reads through the front door, the rest through the application."""

    async def _make_runner(self, **kwargs: Any) -> ProxyRunner:
        return ProxyRunner(self.app, **kwargs)


@dataclass
class Proxy:
    """A running proxy (real sockets), its metrics registry, and the fake behind it."""

    client: TestClient[web.Request, web.Application]
    registry: CollectorRegistry
    fake: FakeLabelStudio
    settings: Settings
    upstream: TestServer

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"annotation_proxy_{name}", labels) or 0.0

    def auth(self, key: str = CLIENT_KEY) -> dict[str, str]:
        return {"Authorization": f"Token {key}"}


ProxyFactory = Callable[..., Awaitable[Proxy]]

"""The official label-studio-sdk, pointed at the proxy with a client key, works as against Label Studio."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from tests.fakes.label_studio import FakeLabelStudio
from tests.support.proxies import CLIENT_KEY, ProxyFactory


def sdk_get(base_url: str, api_key: str, annotation_id: int) -> Any:
    with httpx.Client(follow_redirects=True) as http:
        client = LabelStudio(base_url=base_url, api_key=api_key, httpx_client=http)  # type: ignore[no-untyped-call]
        return client.annotations.get(id=annotation_id)


async def sdk_error(base_url: str, api_key: str, annotation_id: int) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await asyncio.to_thread(sdk_get, base_url, api_key, annotation_id)  # the SDK is synchronous
    return caught.value


async def test_sdk_reads_the_same_annotation_through_the_proxy(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, upstream: TestServer
) -> None:
    proxy = await make_proxy()
    fake_ls.add_annotation(ground_truth=True, lead_time=12.25)
    via_proxy = await asyncio.to_thread(sdk_get, str(proxy.client.make_url("/")), CLIENT_KEY, 1)
    direct = await asyncio.to_thread(sdk_get, str(upstream.make_url("/")), fake_ls.legacy_token, 1)
    assert via_proxy.id == 1
    assert via_proxy.ground_truth is True
    assert via_proxy.model_dump() == direct.model_dump()
    # The SDK presented the client key, not a Label Studio token, and the proxy used its own.
    assert all(g.headers["Authorization"] == f"Token {fake_ls.legacy_token}" for g in fake_ls.annotation_gets())


async def test_sdk_raises_the_same_api_error_for_a_missing_annotation(
    make_proxy: ProxyFactory, fake_ls: FakeLabelStudio, upstream: TestServer
) -> None:
    proxy = await make_proxy()
    via_proxy = await sdk_error(str(proxy.client.make_url("/")), CLIENT_KEY, 999)
    direct = await sdk_error(str(upstream.make_url("/")), fake_ls.legacy_token, 999)
    assert via_proxy.status_code == direct.status_code == 404
    assert isinstance(via_proxy.body, dict)
    assert isinstance(direct.body, dict)
    assert via_proxy.body["detail"] == direct.body["detail"]
    assert set(via_proxy.body) == set(direct.body)


async def test_sdk_with_a_wrong_client_key_gets_401(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    error = await sdk_error(str(proxy.client.make_url("/")), "not-a-client-key-at-all", 1)
    assert error.status_code == 401
    assert isinstance(error.body, dict)
    assert error.body["detail"] == "Invalid token."
    assert proxy.fake.requests == []

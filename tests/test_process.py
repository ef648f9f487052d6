"""The proxy as `make run` starts it: a real process, configured by its environment."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import aiohttp
from aiohttp.test_utils import TestServer

from tests.fakes.label_studio import FakeLabelStudio
from tests.support.cache_status import status_of
from tests.support.ports import free_port
from tests.support.processes import START_TIMEOUT, clean_environment, wait_until_healthy
from tests.support.proxies import CLIENT_KEY


async def test_the_process_serves_annotations_and_logs_its_configuration_masked(
    upstream: TestServer, fake_ls: FakeLabelStudio
) -> None:
    fake_ls.add_annotation()
    port = free_port()
    env = clean_environment()
    env |= {
        "LABEL_STUDIO_URL": str(upstream.make_url("/")),
        "LABEL_STUDIO_API_KEY": fake_ls.legacy_token,
        "PROXY_PORT": str(port),
        "PROXY_CLIENT_KEYS": CLIENT_KEY,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_healthy(base, process)
        async with aiohttp.ClientSession() as session:
            for expected in ("annotation-proxy; fwd=miss; fwd-status=200; stored", "annotation-proxy; hit"):
                headers = {"Authorization": f"Token {CLIENT_KEY}"}
                async with session.get(f"{base}/api/annotations/1/", headers=headers) as response:
                    assert response.status == 200
                    assert status_of(response.headers) == expected
                    assert json.loads(await response.read())["id"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    assert process.returncode == 0
    assert len(fake_ls.annotation_gets()) == 1
    lines = [json.loads(line) for line in stderr.decode().splitlines()]
    starting = next(line for line in lines if line["msg"] == "starting annotation-proxy")
    assert starting["config"]["label_studio_api_key"] == "<legacy token>"
    assert starting["config"]["cache"] == "memory"
    assert any(line["msg"] == "no REDIS_URL: caching in process memory" for line in lines)
    assert sum(line["msg"] == "request" for line in lines) >= 2
    assert fake_ls.legacy_token not in stderr.decode()
    assert CLIENT_KEY not in stderr.decode()
    assert stdout == b""


def test_start_up_is_frozen_out_of_the_collectors_sight_and_its_thresholds_stay_cpythons() -> None:
    script = (
        "import gc, json; from proxy.__main__ import freeze_start_up; "
        "before = gc.get_threshold(); freeze_start_up(); "
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout  # noqa: S603
    before, after, frozen = json.loads(out)
    assert after == before  # CPython's: fewer collections held large bodies in cycles past the memory budget
    assert frozen > 10_000  # what start-up built

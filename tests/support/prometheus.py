"""A real Prometheus (Debian's ``prometheus`` package) on a free loopback port, scraping one target every second
with the recording and alert rules of deploy/prometheus loaded (test_prometheus, test_ops_process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.deploy_files import RULES, require_binary
from tests.support.ports import free_port

JOB = "annotation-proxy"
WAIT = 60.0  # seconds for any one condition: start-up, a scrape, a rule evaluation
POLL = 0.2


@dataclass
class Prometheus:
    url: str
    process: asyncio.subprocess.Process
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def query(self, session: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with session.get(f"{self.url}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_for(self, description: str, check: Any) -> Any:
        """Poll ``check()`` (async; returns a value or None) until it returns a value, within WAIT seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        last: Any = None
        while loop.time() < deadline:
            if self.process.returncode is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                last = await check()
            except aiohttp.ClientError as exc:
                last = exc
            else:
                if last is not None:
                    return last
            await asyncio.sleep(POLL)
        pytest.fail(f"{description}: not within {WAIT:g} s (last: {last!r})\n{self.log_tail()}")


@contextlib.asynccontextmanager
async def running_prometheus(tmp_path: Path, target: str) -> AsyncIterator[Prometheus]:
    binary = require_binary("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(path) for path in sorted(RULES.glob("*.yml"))],
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    log = tmp_path / "prometheus.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=log_file,
            stderr=log_file,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        yield prometheus
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()

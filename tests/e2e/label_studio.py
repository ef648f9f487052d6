"""The real Label Studio 1.23.2, for the end-to-end tests: installed once into its own virtualenv, started headless.

It pins many packages, so it lives outside the repository and outside the project's .venv, in
``$ANNOTATION_PROXY_LABEL_STUDIO_VENV`` (default ``~/.cache/annotation-proxy/label-studio-1.23.2``), reused when it
is already there. :func:`running_label_studio` starts it on a free loopback port with a fresh data directory (the
command and environment of ../shared/label-studio/BEHAVIOUR.md), waits for ``/health`` and stops its process group
at the end. Nothing here talks to the proxy.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

VERSION = "1.23.2"
DEFAULT_VENV = Path.home() / ".cache" / "annotation-proxy" / f"label-studio-{VERSION}"
INSTALL_TIMEOUT = 1800.0
START_TIMEOUT = 240.0  # about 35 s on a new database here; CI machines may be slower
LOOPBACK = "127.0.0.1"


class NotInstallable(Exception):
    """Label Studio cannot be installed on this machine (no package index, no wheel for this platform)."""


def venv_path() -> Path:
    return Path(os.environ.get("ANNOTATION_PROXY_LABEL_STUDIO_VENV", DEFAULT_VENV))


def ensure_installed() -> Path:
    """The ``label-studio`` executable, installing it into its virtualenv first when it is not there."""
    venv = venv_path()
    executable = venv / "bin" / "label-studio"
    if executable.exists():
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)  # noqa: S603
        subprocess.run(  # noqa: S603 - a fixed command
            [str(venv / "bin" / "pip"), "install", "--quiet", f"label-studio=={VERSION}"],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        output = getattr(exc, "stderr", b"") or b""
        detail = output.decode(errors="replace")[-800:]
        raise NotInstallable(f"pip install label-studio=={VERSION} failed: {detail}") from None
    if not executable.exists():
        raise NotInstallable(f"label-studio=={VERSION} installed no label-studio command")
    return executable


@dataclass
class LabelStudio:
    url: str
    legacy_token: str
    log: Path

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """One call to Label Studio's API (legacy token unless another is given): status and decoded JSON."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Token {token or self.legacy_token}", "Content-Type": "application/json"}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            with error:
                raw = error.read()
            return error.code, json.loads(raw) if raw.startswith(b"{") else raw

    def get_raw(
        self, path: str, authorization: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, float]:
        """``GET path`` as a client would: status, Label Studio's bytes and the moment the answer arrived."""
        headers = {"Authorization": authorization or f"Token {self.legacy_token}", **(headers or {})}
        request = urllib.request.Request(f"{self.url}{path}", headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, response.read(), time.time()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read(), time.time()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310
            return b"UP" in response.read()
    except (OSError, ValueError):
        return False


@contextmanager
def running_label_studio() -> Iterator[LabelStudio]:
    executable = ensure_installed()
    port = free_port()
    token = secrets.token_hex(20)
    with tempfile.TemporaryDirectory(prefix="annotation-proxy-e2e-label-studio-") as workdir:
        data = Path(workdir) / "data"
        log = Path(workdir) / "label-studio.log"
        env = {
            "PATH": f"{executable.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": workdir,
            "LABEL_STUDIO_USERNAME": "admin@example.com",
            "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
            "LABEL_STUDIO_USER_TOKEN": token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        }
        command = [str(executable), "start", "--no-browser", "--internal-host", LOOPBACK, "--port", str(port)]
        with log.open("wb") as output:
            process = subprocess.Popen(  # noqa: S603 - a fixed executable and arguments
                [*command, "--data-dir", str(data)], env=env, stdout=output, stderr=output, start_new_session=True
            )
        studio = LabelStudio(url=f"http://{LOOPBACK}:{port}", legacy_token=token, log=log)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _healthy(studio.url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Label Studio did not become healthy on {studio.url}:\n{studio.log_tail()}")
                time.sleep(0.5)
            yield studio
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

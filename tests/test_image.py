"""The container image, built from the Dockerfile and run as its users run it (tests/support/image.py says how).

One build for the module: the base from Debian's packages, then both stages of the Dockerfile from an empty cache.
What a user of the image relies on is checked on the result: who it runs as, what it holds, that it refuses an
unsafe configuration, serves, answers its own HEALTHCHECK and stops cleanly, with the locked packages.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.fakes.label_studio import FakeLabelStudio
from tests.support.deploy_files import DEPLOY, ROOT, load_yaml, load_yaml_documents
from tests.support.image import BuiltImage, build_image
from tests.support.ports import free_port
from tests.support.processes import START_TIMEOUT, wait_until_healthy
from tests.support.proxies import CLIENT_KEY

USER = "annotation-proxy"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def require_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("the image test builds with podman and mmdebstrap as root (CI and `make test` run as root)")
    missing = [name for name in ("podman", "mmdebstrap", "unshare") if shutil.which(name) is None]
    if missing:
        pytest.fail(f"not on PATH: {', '.join(missing)}; `make test` installs them (.ci/system-packages)")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BuiltImage]:
    require_tools()
    work = tmp_path_factory.mktemp("image")
    try:
        built = build_image(work)
        # Past pytest's capture, so that every run of `make test` shows the figures.
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(
                f"\nimage: {built.size_bytes / 1e6:.0f} MB; base {built.base_seconds:.0f} s, "
                f"build {built.build_seconds:.0f} s (both stages, empty cache)"
            )
        yield built
    finally:
        shutil.rmtree(work, ignore_errors=True)


def proxy_environment(image: BuiltImage, upstream: TestServer, fake: FakeLabelStudio, **extra: str) -> dict[str, str]:
    """The image's own environment, plus what a deployment sets."""
    return image.environment | {
        "LABEL_STUDIO_URL": str(upstream.make_url("/")),
        "LABEL_STUDIO_API_KEY": fake.legacy_token,
        **extra,
    }


def test_the_image_runs_as_its_own_unprivileged_user(image: BuiltImage) -> None:
    assert image.config["User"] == "10001:10001"
    passwd = {line.split(":")[0]: line.split(":") for line in (image.rootfs / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (image.rootfs / "etc/group").read_text().splitlines()}
    assert passwd[USER][2:4] == ["10001", "10001"]
    assert passwd[USER][6] == "/usr/sbin/nologin"
    assert groups[USER][2] == "10001"
    assert [name for name, fields in passwd.items() if fields[2] == "10001"] == [USER]
    # Debian's own "proxy" user (uid 13) is the one that broke the build: it is still there, untouched.
    assert passwd["proxy"][2] == "13"
    uid_gid = image.run(["python", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert uid_gid.split() == ["10001", "10001"]


def test_the_runs_here_are_on_a_read_only_root_with_a_writable_tmp(image: BuiltImage) -> None:
    """How compose and Kubernetes run the image (read_only / readOnlyRootFilesystem, a tmpfs or emptyDir /tmp),
    and so how every run in this module starts it."""
    probe = (
        "import errno\n"
        "try:\n    open('/opt/venv/probe', 'w')\nexcept OSError as exc:\n    print(errno.errorcode[exc.errno])\n"
        "with open('/tmp/probe', 'w') as tmp:\n    print(tmp.write('ok'))"
    )
    assert image.run(["python", "-c", probe]).split() == ["EROFS", "2"]
    assert not (image.rootfs / "tmp" / "probe").exists(), "the run had a tmpfs of its own"


def test_the_final_image_holds_no_installer_and_no_compiler(image: BuiltImage) -> None:
    interpreters = ["/opt/venv/bin/python", "/usr/bin/python3"]
    probe = "import importlib.util as u; print([m for m in ('pip', 'setuptools', 'wheel') if u.find_spec(m)])"
    for interpreter in interpreters:
        assert image.run([interpreter, "-c", probe]).strip() == "[]", interpreter
    path_dirs = image.environment["PATH"].split(":")
    tools = re.compile(r"(pip[0-9.]*|easy_install.*|gcc.*|g\+\+.*|cc|c\+\+|clang.*|ld|make)")
    found = [
        f"{directory}/{entry.name}"
        for directory in path_dirs
        if (image.rootfs / directory.lstrip("/")).is_dir()
        for entry in (image.rootfs / directory.lstrip("/")).iterdir()
        if tools.fullmatch(entry.name)
    ]
    assert found == []
    assert not (image.rootfs / "src").exists(), "the builder's sources stay in the builder"
    assert not (image.rootfs / "wheels").exists()


def test_without_client_keys_the_image_refuses_to_start_with_one_line(
    image: BuiltImage, upstream: TestServer, fake_ls: FakeLabelStudio
) -> None:
    env = proxy_environment(image, upstream, fake_ls)
    assert env["PROXY_HOST"] == "0.0.0.0"  # noqa: S104 (the image's own setting is what is under test)
    assert "PROXY_CLIENT_KEYS" not in env
    completed = subprocess.run(  # noqa: S603
        image.command(image.config["Entrypoint"]), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    (line,) = completed.stderr.splitlines()
    assert line.startswith("annotation-proxy: configuration error: PROXY_CLIENT_KEYS is empty")
    assert fake_ls.legacy_token not in completed.stderr
    assert fake_ls.annotation_gets() == []


def healthcheck(image: BuiltImage, env: dict[str, str]) -> int:
    """The image's HEALTHCHECK command, run inside the image with its timeout; its exit status."""
    test = image.healthcheck["Test"]
    assert test[0] == "CMD", test
    try:
        return subprocess.run(  # noqa: S603
            image.command(test[1:]),
            env=env,
            capture_output=True,
            timeout=image.healthcheck["Timeout"] / 1e9 + 5,
            check=False,
        ).returncode
    except subprocess.TimeoutExpired:
        return -1


def commands_the_deployments_run_in_the_image() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command that docker-compose.yml and the Kubernetes manifests run inside the proxy's
    container: health checks, exec probes, preStop hooks."""
    found: list[tuple[str, list[str]]] = []
    test = load_yaml(ROOT / "docker-compose.yml")["services"]["annotation-proxy"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    found.append(("docker-compose.yml healthcheck", test[1:]))
    for manifest in sorted((DEPLOY / "kubernetes").glob("*/*.yaml")):
        for document in load_yaml_documents(manifest):
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                if "/annotation-proxy:" not in container["image"]:
                    continue
                hooks = {name: container.get(name) or {} for name in PROBES}
                hooks["preStop"] = (container.get("lifecycle") or {}).get("preStop") or {}
                for name, hook in hooks.items():
                    if "exec" in hook:
                        found.append((f"{manifest.relative_to(ROOT)} {name}", hook["exec"]["command"]))
    return found


def on_port(argv: list[str], port: int) -> list[str]:
    """``argv`` with its loopback URLs moved to ``port`` (here the proxy shares the machine's network)."""
    return [re.sub(r"//127\.0\.0\.1:\d+/", f"//127.0.0.1:{port}/", arg) for arg in argv]


async def test_the_image_serves_answers_its_healthcheck_and_stops_on_sigterm(
    image: BuiltImage, upstream: TestServer, fake_ls: FakeLabelStudio
) -> None:
    fake_ls.add_annotation()
    port = free_port()
    # Loopback instead of the image's 0.0.0.0: the process shares this machine's network (no container network).
    env = proxy_environment(image, upstream, fake_ls, PROXY_HOST="127.0.0.1", PROXY_PORT=str(port))
    env["PROXY_CLIENT_KEYS"] = CLIENT_KEY
    assert await asyncio.to_thread(healthcheck, image, env) != 0, "the health check fails while nothing listens"

    process = await asyncio.create_subprocess_exec(
        *image.command(image.config["Entrypoint"]),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_healthy(base, process)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert "annotation_proxy_http_requests_total" in await response.text()
            headers = {"Authorization": f"Token {CLIENT_KEY}"}
            async with session.get(f"{base}/api/annotations/1/", headers=headers) as response:
                assert response.status == 200
                body = json.loads(await response.read())
        assert body["id"] == 1
        assert body["result"] == fake_ls.annotation(1)["result"]
        assert len(fake_ls.annotation_gets()) == 1
        assert await asyncio.to_thread(healthcheck, image, env) == 0
        commands = commands_the_deployments_run_in_the_image()
        assert any(where.startswith("deploy/kubernetes/shared") for where, _ in commands)
        for where, argv in commands:
            completed = await asyncio.to_thread(
                subprocess.run,
                image.command(on_port(argv, port)),
                env=env,
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert completed.returncode == 0, f"{where}: {argv}: {completed.stderr!r}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    assert process.returncode == 0, stderr.decode()[-2000:]
    messages = [json.loads(line)["msg"] for line in stderr.decode().splitlines()]
    assert messages[0] == "starting annotation-proxy"
    assert messages[-1] == "stopped"
    assert fake_ls.legacy_token not in stderr.decode()
    assert CLIENT_KEY not in stderr.decode()
    assert stdout == b""


def locked() -> list[Requirement]:
    lines = (DEPLOY / "requirements.lock").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_holds_exactly_the_locked_packages_at_the_versions_the_suite_runs(image: BuiltImage) -> None:
    listing = image.run(
        [
            "/opt/venv/bin/python",
            "-c",
            "import importlib.metadata as m, json, platform; print(json.dumps({'python': platform.python_version(), "
            "'packages': {d.metadata['Name']: d.version for d in m.distributions()}}))",
        ]
    )
    found = json.loads(listing)
    in_image = {normalized(name): version for name, version in found["packages"].items()}
    assert in_image.pop("annotation-proxy") == importlib.metadata.version("annotation-proxy")
    image_python = default_environment() | {
        "python_full_version": found["python"],
        "python_version": ".".join(found["python"].split(".")[:2]),
    }
    expected = {
        normalized(pin.name): str(pin.specifier).removeprefix("==")
        for pin in locked()
        if pin.marker is None or pin.marker.evaluate(image_python)
    }
    assert in_image == expected
    # The suite ran with the same versions (make installs .venv with the lock as its constraints).
    here = default_environment()
    suite = {
        normalized(pin.name): importlib.metadata.version(pin.name)
        for pin in locked()
        if pin.marker is None or pin.marker.evaluate(here)
    }
    assert suite == {name: version for name, version in expected.items() if name in suite}
    assert found["python"].startswith("3.11."), "the Python minor the lock was made for (deploy/lock.sh)"

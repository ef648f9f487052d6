"""The container image, built from the Dockerfile and run the way this machine allows, for tests/test_image.py.

These machines have no container daemon, and container runtimes cannot start containers here (their
``setrlimit`` calls are refused). What does work, and is what this module does:

1. The base image: ``mmdebstrap`` makes a Debian bookworm root file system from the machine's own Debian package
   sources, with python3 (3.11, the Debian release and Python minor of ``python:3.11.*-slim-bookworm``) and what
   the Dockerfile runs (python3-venv, python-is-python3, passwd). It has Debian's ``/etc/passwd`` and
   ``/etc/group``, as the real base has. ``podman import`` makes it an image, passed as ``PYTHON_IMAGE``.
2. ``podman build --isolation chroot`` builds the Dockerfile as it is, both stages, in a podman store of the test
   run's own (so the build starts from an empty cache and leaves nothing behind). pip inside the build trusts the
   CA bundle that pip on this machine trusts, mounted for the build only.
3. ``podman create`` + ``podman export`` give the final image's file system; its entrypoint then runs as the
   image's user with ``unshare --user --map-user=UID --map-group=GID --root=ROOTFS`` and the image's environment,
   on that file system mounted read-only with a tmpfs on /tmp (as the shipped deployments run it). No network
   namespace: the process listens on this machine's loopback, like ``--network host``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.deploy_files import ROOT

# What the Dockerfile needs of its base, beyond Debian's minimal system.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
BASE_REFERENCE = "localhost/annotation-proxy-base:bookworm"
IMAGE_REFERENCE = "localhost/annotation-proxy:test"
# Documentation, manual pages and translations stay out of the base: the image never shows them.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
# Where Debian's pip (the one python3-venv puts in a virtualenv) reads the CA bundle.
CA_BUNDLE_IN_BUILD = "/etc/ssl/certs/ca-certificates.crt"
DEBIAN_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
BUILD_TIMEOUT = 900.0


class ImageError(AssertionError):
    """A step of building or exporting the image failed; the message carries the tool's own output."""


def run(argv: Sequence[str], *, timeout: float = BUILD_TIMEOUT, env: Mapping[str, str] | None = None) -> str:
    completed = subprocess.run(  # noqa: S603 (argv of fixed tools)
        list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-40:])
        raise ImageError(f"{' '.join(argv[:3])} ... exited with {completed.returncode}:\n{tail}")
    return completed.stdout


def ca_bundle() -> Path:
    """The CA bundle pip on this machine trusts (PIP_CERT, else SSL_CERT_FILE, else Debian's)."""
    for name in ("PIP_CERT", "SSL_CERT_FILE"):
        if os.environ.get(name) and Path(os.environ[name]).is_file():
            return Path(os.environ[name]).resolve()
    return Path(CA_BUNDLE_IN_BUILD).resolve()


def debian_sources() -> Path:
    """This machine's apt sources, which mmdebstrap copies into the base (it names no mirror of its own)."""
    for path in DEBIAN_SOURCES:
        if path.is_file():
            return path
    raise ImageError(f"no Debian package sources at {' or '.join(map(str, DEBIAN_SOURCES))}")


@dataclass(frozen=True)
class Podman:
    """podman with a store of its own under ``root``: nothing is shared with, or left in, the machine's store."""

    root: Path

    def __call__(self, *args: str, timeout: float = BUILD_TIMEOUT) -> str:
        store = ["--root", str(self.root / "storage"), "--runroot", str(self.root / "run"), "--storage-driver", "vfs"]
        return run([shutil.which("podman") or "podman", *store, *args], timeout=timeout)


@dataclass(frozen=True)
class BuiltImage:
    """The final image: its configuration (docker format) and its exported root file system."""

    config: dict[str, Any]
    healthcheck: dict[str, Any]
    rootfs: Path
    size_bytes: int
    base_seconds: float
    build_seconds: float

    @property
    def environment(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])

    @property
    def user(self) -> tuple[int, int]:
        uid, _, gid = str(self.config["User"]).partition(":")
        return int(uid), int(gid or uid)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the image as the image's user (give it the image's environment), on a read-only
        root file system with a tmpfs on /tmp, as docker-compose.yml and the Kubernetes manifests run it.

        A mount namespace of its own makes the read-only bind mount and the tmpfs (gone with the process); then
        an user namespace maps the image's uid and gid, and the root moves to the image. Each step ``exec``s the
        next, so the process started is the proxy itself and a signal sent to it reaches the proxy."""
        uid, gid = self.user
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        script = (
            'set -e; root="$1"; shift; mount --bind "$root" "$root"; mount -o remount,bind,ro "$root"; '
            'mount -t tmpfs -o mode=1777,size=64m tmpfs "$root/tmp"; exec "$@"'
        )
        inner = [
            unshare,
            "--user",
            f"--map-user={uid}",
            f"--map-group={gid}",
            f"--root={self.rootfs}",
            f"--wd={self.config.get('WorkingDir') or '/'}",
            "--",
            *argv,
        ]
        outer = [unshare, "--mount", "--propagation=private", "--", "/bin/sh", "-c", script, "sh", str(self.rootfs)]
        return [*outer, *inner]

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60.0) -> str:
        return run(self.command(argv), env=self.environment if env is None else env, timeout=timeout)


def build_image(work: Path) -> BuiltImage:
    """Build the base, then the Dockerfile from an empty cache, then export the final image into ``work``."""
    podman = Podman(work / "podman")
    started = time.monotonic()
    base_tar = work / "base.tar"
    run(
        [
            shutil.which("mmdebstrap") or "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
            "bookworm",
            str(base_tar),
            str(debian_sources()),
        ]
    )
    # As the python image sets them; the Dockerfile's `ENV PATH=/opt/venv/bin:$PATH` extends this one.
    podman("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "--change", 'CMD ["python3"]', str(base_tar), BASE_REFERENCE)  # fmt: skip
    base_tar.unlink()
    base_seconds = time.monotonic() - started

    started = time.monotonic()
    podman(
        "build",
        "--isolation",
        "chroot",
        "--format",
        "docker",  # the OCI format has no HEALTHCHECK
        "--no-cache",
        "--pull=never",
        "--build-arg",
        f"PYTHON_IMAGE={BASE_REFERENCE}",
        "--volume",
        f"{ca_bundle()}:{CA_BUNDLE_IN_BUILD}:ro",
        "--tag",
        IMAGE_REFERENCE,
        str(ROOT),
    )
    build_seconds = time.monotonic() - started

    (inspected,) = json.loads(podman("image", "inspect", IMAGE_REFERENCE))
    container = podman("create", "--no-healthcheck", IMAGE_REFERENCE).strip()
    exported = work / "image.tar"
    podman("export", "--output", str(exported), container)
    podman("rm", container)
    rootfs = work / "rootfs"
    rootfs.mkdir()
    with tarfile.open(exported) as archive:
        archive.extractall(rootfs, filter="fully_trusted")  # noqa: S202 (our own image; device nodes included)
    exported.unlink()
    return BuiltImage(
        config=inspected["Config"],
        healthcheck=inspected.get("Healthcheck") or {},
        rootfs=rootfs,
        size_bytes=int(inspected["Size"]),
        base_seconds=base_seconds,
        build_seconds=build_seconds,
    )

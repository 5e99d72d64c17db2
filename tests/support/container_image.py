"""Build the Dockerfile with podman and run the image's filesystem as a container would, on a
machine where no container engine can start containers.

- The base: Debian bookworm with python3, python3-venv, Python's headers and ca-certificates,
  bootstrapped by ``mmdebstrap`` from the machine's apt sources and imported into podman. It
  stands in for ``python:3.11-slim-bookworm`` (same Debian, same Python minor, headers as the
  slim image keeps them), which cannot be pulled here.
- The build: ``podman build --isolation chroot`` (no daemon, no user namespaces), the host's
  network and CA bundle for pip, and the machine's local CPU torch wheel through the
  Dockerfile's ``WHEELS_DIR`` argument.
- The run: ``podman run`` cannot start containers in this sandbox (it refuses ``setrlimit``), so
  the image's mounted root filesystem is run directly: new mount and PID namespaces, the root
  remounted read-only, tmpfs on ``/tmp``, the cache volume bound at ``/cache``, and ``chroot``
  into it as the image's user with the image's environment, working directory and entry point.
  The command becomes PID 1 of its namespace, as in a container.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

BASE_TAG = "localhost/reranker-test-base:bookworm-headers"
"""The bootstrapped stand-in for python:3.11-slim-bookworm (its Python headers included)."""
IMAGE_TAG = "localhost/reranker-service:test"
CPU_WHEELS = Path("/opt/wheels")
"""Where this machine keeps its local CPU torch wheel."""
HOST_CA_CERTS = Path("/etc/ssl/certs")
TOOLS = ("podman", "mmdebstrap", "unshare", "nsenter")

# Inside new mount and PID namespaces: give the image's root a mount of its own, make it
# read-only (podman mounts images read-only already; this keeps it so whatever the storage
# driver does), put the container's writable places on it, then become the entry point as PID 1.
_ENTER_ROOTFS = """
set -eu
root=$1 volume=$2 compile_cache=$3 user=$4 workdir=$5
shift 5
mount --make-rprivate /
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$root/tmp"
mount --bind "$volume" "$root/cache"
mount --bind "$compile_cache" "$root/compile-cache"
exec chroot --userspec="$user" "$root" /usr/bin/env -i -C "$workdir" "$@"
"""


def missing_prerequisites() -> list[str]:
    """What this machine lacks to build and run the image; empty when it can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not list(CPU_WHEELS.glob("torch-*+cpu-*.whl")):
        missing.append(
            f"a CPU torch wheel in {CPU_WHEELS} (the test builds the image with the machine's "
            "local CPU wheel; without one pip would download the multi-GB CUDA build)"
        )
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _run(command: Sequence[str], *, timeout: float) -> str:
    completed = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} exited {completed.returncode}:\n"
            + completed.stderr.decode(errors="replace")[-4000:]
        )
    return completed.stdout.decode()


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], check=False).returncode == 0


def bootstrap_base(scratch: Path, tag: str = BASE_TAG) -> None:
    """Debian bookworm with Python 3.11, as a podman image; kept once made."""
    if image_exists(tag):
        return
    tarball = scratch / "base.tar"
    _run(
        [
            *("mmdebstrap", "--quiet", "--variant=apt"),
            "--include=python3,python3-venv,libpython3.11-dev,ca-certificates",
            # python:*-slim images answer to `python`; the Dockerfile calls it so.
            '--customize-hook=ln -sf python3 "$1/usr/bin/python"',
            *("bookworm", str(tarball)),
        ],
        timeout=900,
    )
    try:
        _run(["podman", "import", str(tarball), tag], timeout=600)
    finally:
        tarball.unlink()


@dataclass(frozen=True)
class ImageConfig:
    """What ``docker run`` would take from the image."""

    user: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    healthcheck: list[str]
    stop_signal: str

    @classmethod
    def of(cls, tag: str) -> ImageConfig:
        (inspected,) = json.loads(_run(["podman", "image", "inspect", tag], timeout=60))
        config = inspected["Config"]
        # podman reports the HEALTHCHECK beside the OCI config, which has no place for it.
        test = (inspected.get("Healthcheck") or {}).get("Test") or []
        return cls(
            user=config.get("User") or "root",
            env=dict(item.split("=", 1) for item in config.get("Env") or []),
            entrypoint=list(config.get("Entrypoint") or []),
            cmd=list(config.get("Cmd") or []),
            workdir=config.get("WorkingDir") or "/",
            healthcheck=test[1:] if test[:1] == ["CMD"] else [],
            stop_signal=config.get("StopSignal") or "SIGTERM",
        )


def build_image(tag: str = IMAGE_TAG, base: str = BASE_TAG) -> float:
    """Build the CPU image on ``base``; return the seconds the build took."""
    started = time.monotonic()
    _run(
        [
            *("podman", "build", "--isolation", "chroot", "--network", "host"),
            # docker format: OCI images have no HEALTHCHECK or STOPSIGNAL.
            *("--format", "docker"),
            *("--volume", f"{HOST_CA_CERTS}:/etc/ssl/certs:ro"),
            *("--volume", f"{CPU_WHEELS}:/wheels:ro"),
            *("--build-arg", f"PYTHON_IMAGE={base}"),
            *("--build-arg", "WHEELS_DIR=/wheels"),
            *("--tag", tag),
            str(ROOT),
        ],
        timeout=1800,
    )
    return time.monotonic() - started


def image_size_bytes(tag: str) -> int:
    (inspected,) = json.loads(_run(["podman", "image", "inspect", tag], timeout=60))
    return int(inspected["Size"])


@contextlib.contextmanager
def mounted_rootfs(tag: str) -> Iterator[Path]:
    """The image's root filesystem as a directory of this machine."""
    path = Path(_run(["podman", "image", "mount", tag], timeout=120).strip())
    try:
        yield path
    finally:
        subprocess.run(["podman", "image", "unmount", tag], capture_output=True, check=False)


def numeric_user(rootfs: Path, user: str) -> tuple[int, int]:
    """The image's ``USER`` (a name, or uid[:gid]) as numbers, from its own /etc/passwd."""
    name, _, group = user.partition(":")
    if name.isdigit():
        return int(name), int(group) if group.isdigit() else int(name)
    for line in (rootfs / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise LookupError(f"user {user!r} is not in the image's /etc/passwd")


def in_container(
    rootfs: Path,
    volume: Path,
    config: ImageConfig,
    env: Mapping[str, str],
    argv: Sequence[str],
    compile_cache: Path | None = None,
) -> list[str]:
    """The command line that runs ``argv`` in the image's filesystem as its container would,
    ``volume`` at ``/cache`` and ``compile_cache`` (default: a folder in ``volume``) at
    ``/compile-cache``."""
    uid, gid = numeric_user(rootfs, config.user)
    environment = [f"{key}={value}" for key, value in {**config.env, **env}.items()]
    if compile_cache is None:
        compile_cache = volume / ".compile-cache"
        compile_cache.mkdir(exist_ok=True)
        os.chown(compile_cache, uid, gid)
    return [
        *("unshare", "--mount", "--pid", "--fork", "--kill-child"),
        *("sh", "-c", _ENTER_ROOTFS, "sh"),
        *(str(rootfs), str(volume), str(compile_cache), f"{uid}:{gid}", config.workdir),
        *environment,
        *argv,
    ]


def in_namespace_of(pid: int, uid: int, gid: int, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` beside process ``pid``: in its mount namespace, its
    root and working directory, as ``uid``:``gid``."""
    return [
        *("nsenter", f"--target={pid}", "--mount", "--root", "--wd"),
        *(f"--setuid={uid}", f"--setgid={gid}"),
        *argv,
    ]


def child_pid(pid: int) -> int:
    """The one child of ``unshare --fork``: the container's PID 1."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise LookupError(f"process {pid} has children {children}, not one")
    return int(children[0])


def namespace_pid(pid: int) -> int:
    """``pid``'s number in its own (innermost) PID namespace."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise LookupError(f"no NSpid for process {pid}")


def real_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise LookupError(f"no Uid for process {pid}")

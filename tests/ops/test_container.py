"""What the container promises, checked without a Docker engine: the service runs with a
read-only root filesystem apart from its cache and scratch space, and every dependency is
pinned by constraints.txt."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from tests.support.paths import ROOT
from tests.support.script_modules import load_module
from tests.support.service_process import start_service

pytestmark = pytest.mark.slow  # starts real server processes

# In a private mount namespace: "/" read-only, then tmpfs on the cache and scratch directories
# (the compose file's volume and tmpfs), then the service in place of the shell.
READ_ONLY_ROOT = (
    "mount --make-rprivate / && mount -o remount,bind,ro / && "
    'mount -t tmpfs cache "$RERANKER_TEST_CACHE" && mount -t tmpfs scratch "$TMPDIR" && '
    'exec "$@"'
)


def _can_make_mount_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _can_make_mount_namespaces(), reason="needs root and unshare for a mount namespace"
)
def test_the_service_runs_on_a_read_only_root(checkpoint: Path, tmp_path: Path) -> None:
    cache, scratch = tmp_path / "cache", tmp_path / "tmp"
    cache.mkdir()
    scratch.mkdir()
    env = {
        "RERANKER_TEST_CACHE": str(cache),
        "TMPDIR": str(scratch),
        # As in the image: caches on the volume, no bytecode written next to the code.
        "HF_HOME": str(cache / "huggingface"),
        "XDG_CACHE_HOME": str(cache / "xdg"),
        "RERANKER_COMPILE_CACHE": str(cache / "compile"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    launcher = ["unshare", "--mount", "sh", "-c", READ_ONLY_ROOT, "sh"]
    service = start_service(checkpoint, env=env, launcher=launcher)
    try:
        with httpx.Client(base_url=service.base_url(), timeout=30) as http:
            scored = http.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
            metrics = http.get("/metrics")
        assert scored.status_code == 200
        assert metrics.status_code == 200
        # The root really was read-only for it: its own attempt to write there fails.
        probe = subprocess.run(
            ["nsenter", f"--mount=/proc/{service.proc.pid}/ns/mnt", "touch", str(ROOT / "x")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "Read-only file system" in probe.stderr
        service.proc.send_signal(signal.SIGTERM)
        records = service.finish()
    finally:
        service.stop()
    assert service.proc.returncode == 0
    assert not [r for r in records if r.get("level") in {"error", "critical"}]


def test_constraints_pin_every_dependency_as_installed() -> None:
    writer = load_module(ROOT / "tools" / "write_constraints.py")
    needed = writer.closure(writer.PROJECT, writer.EXTRAS)
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[writer.canonical(name)] = version
    missing = sorted(set(needed) - set(pins))
    assert not missing, f"constraints.txt lacks {missing}: regenerate it (see its header)"
    # The test environment was installed with these constraints, so they are what is tested.
    drifted = {
        name: (pins[name], metadata.version(name)) for name in needed if pins[name] != needed[name]
    }
    assert not drifted, f"installed versions differ from constraints.txt: {drifted}"
    # The service's own dependencies are pinned whatever their name looks like.
    direct = {
        writer.canonical(Requirement(line).name)
        for line in metadata.distribution(writer.PROJECT).requires or []
        if Requirement(line).marker is None
    }
    assert direct - {"torch"} <= set(pins), sorted(direct - {"torch"} - set(pins))
    assert "torch" not in pins


def test_without_a_local_torch_wheel_the_image_test_says_why_it_skips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support import container_image

    monkeypatch.setattr(container_image, "CPU_WHEELS", tmp_path)
    [wheel] = [need for need in container_image.missing_prerequisites() if "wheel" in need]
    assert str(tmp_path) in wheel
    assert "CUDA build" in wheel

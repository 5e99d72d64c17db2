"""The image as users run it: built from the Dockerfile with podman, then its filesystem run as
its container would be (see ``tests/container_image.py`` for how, without a container engine)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reranker_service.tiny_checkpoint import build_checkpoint
from tests.container_image import (
    IMAGE_TAG,
    ImageConfig,
    bootstrap_base,
    build_image,
    child_pid,
    in_container,
    in_namespace_of,
    missing_prerequisites,
    mounted_rootfs,
    namespace_pid,
    numeric_user,
    real_uid,
)
from tests.prometheus_server import free_port
from tests.service_process import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.image]

IMAGE_UID = 10001


@pytest.fixture(scope="module")
def image_config(tmp_path_factory: pytest.TempPathFactory) -> ImageConfig:
    missing = missing_prerequisites()
    if missing:
        reason = f"needs {'; '.join(missing)} (.ci/run installs the tools)"
        if os.environ.get("CI"):
            pytest.fail(f"the image test cannot run in CI: {reason}")
        pytest.skip(reason)
    bootstrap_base(tmp_path_factory.mktemp("image-base"))
    build_image()
    return ImageConfig.of(IMAGE_TAG)


@pytest.fixture(scope="module")
def rootfs(image_config: ImageConfig) -> Iterator[Path]:
    with mounted_rootfs(IMAGE_TAG) as path:
        yield path


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """The cache volume, holding the test checkpoint, owned by the image's user."""
    cache = tmp_path / "cache"
    build_checkpoint(cache / "test-model")
    for path in (cache, *cache.rglob("*")):
        os.chown(path, IMAGE_UID, IMAGE_UID)
    return cache


def _service_env(port: int) -> dict[str, str]:
    return {
        "RERANKER_MODEL": "/cache/test-model",
        "RERANKER_DEVICE": "cpu",
        "RERANKER_HOST": "127.0.0.1",  # tests listen on the loopback only
        "RERANKER_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
    }


def _env_assignments(config: ImageConfig, env: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in {**config.env, **env}.items()]


def test_the_image_is_what_the_dockerfile_promises(image_config: ImageConfig, rootfs: Path) -> None:
    assert numeric_user(rootfs, image_config.user) == (IMAGE_UID, IMAGE_UID)
    assert image_config.entrypoint == ["reranker-service"]
    assert image_config.healthcheck == ["reranker-healthcheck"]
    assert image_config.stop_signal == "SIGTERM"
    assert image_config.env["HF_HOME"].startswith("/cache/")
    assert (rootfs / "opt/venv/bin/reranker-service").exists()
    # The CPU build of the tested torch release, and no CUDA libraries with it.
    site_packages = next((rootfs / "opt/venv/lib").glob("python3*/site-packages"))
    assert [path.name for path in site_packages.glob("torch-*.dist-info")] == [
        "torch-2.13.0+cpu.dist-info"
    ]
    assert not (site_packages / "nvidia").exists(), "the CPU image carries CUDA libraries"


def test_the_image_serves_drains_and_writes_only_to_its_volume_and_tmp(
    image_config: ImageConfig, rootfs: Path, volume: Path
) -> None:
    config = image_config
    uid, gid = numeric_user(rootfs, config.user)
    env = _service_env(free_port())
    command = in_container(rootfs, volume, config, env, [*config.entrypoint, *config.cmd])
    service = ServiceProcess(command)
    try:
        base_url = service.base_url()
        with httpx.Client(base_url=base_url, timeout=60) as http:
            ready = http.get("/ready")
            scored = http.post("/rerank", json={"query": "q", "documents": ["a", "b", "c"]})
        assert ready.status_code == 200
        assert scored.status_code == 200
        assert len(scored.json()["results"]) == 3

        pid = child_pid(service.proc.pid)
        assert namespace_pid(pid) == 1, "the entry point is not the container's PID 1"
        assert real_uid(pid) == IMAGE_UID

        def beside(argv: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                in_namespace_of(pid, uid, gid, ["/usr/bin/env", "-i", *argv]),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        healthy = beside([*_env_assignments(config, env), *config.healthcheck])
        assert healthy.returncode == 0, healthy.stderr
        for writable in ("/tmp/probe", "/cache/probe"):
            assert beside(["touch", writable]).returncode == 0, writable
        for read_only in ("/probe", "/home/reranker/probe", "/opt/venv/probe", "/etc/probe"):
            refused = beside(["touch", read_only])
            assert refused.returncode != 0, f"{read_only} was writable"
            assert "Read-only file system" in refused.stderr

        os.kill(pid, signal.Signals[config.stop_signal])
        records = service.finish()  # every stdout line parsed as JSON, or this raises
    finally:
        service.stop()
    assert service.proc.returncode == 0
    events = [record["event"] for record in records]
    assert events.index("draining") < events.index("shutdown")
    assert not [record for record in records if record["level"] in {"error", "critical"}]

    # With the server gone, the HEALTHCHECK command in a fresh container reports it.
    stopped = subprocess.run(
        in_container(rootfs, volume, config, env, config.healthcheck),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stopped.returncode == 1, stopped.stderr

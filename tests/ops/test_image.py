"""The image as users run it: built from the Dockerfile with podman, then its filesystem run as
its container would be (see ``tests/support/container_image.py`` for how, without a container
engine)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reranker_service.tiny_checkpoint import build_checkpoint
from tests.support.container_image import (
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
from tests.support.prometheus_server import free_port
from tests.support.service_process import ServiceProcess

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


def _stop(service: ServiceProcess) -> None:
    """Kill what is left of the container: its PID 1 first, which runs as the image's user and
    so has lost ``unshare --kill-child``'s death signal, then ``unshare``."""
    if service.proc.poll() is None:
        with contextlib.suppress(LookupError, OSError):
            os.kill(child_pid(service.proc.pid), signal.SIGKILL)
    service.stop()


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
    # What torch.compile needs at run time: a C and a C++ compiler, and Python's headers.
    for compiler in ("usr/bin/gcc", "usr/bin/g++"):
        assert (rootfs / compiler).exists(), compiler
    assert list((rootfs / "usr").glob("**/include/python3.11/Python.h"))


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
        _stop(service)
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


def _compiled_start(
    image_config: ImageConfig, rootfs: Path, volume: Path, compile_cache: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start the image with ``RERANKER_COMPILE=true``, score, drain: the device's ``/info``
    entry and every log line."""
    env = {
        **_service_env(free_port()),
        "RERANKER_COMPILE": "true",
        # One 128-token bucket: one compile, seconds rather than minutes on two cores.
        "RERANKER_MAX_LENGTH": "128",
        "RERANKER_MAX_BATCH_TOKENS": "128",
    }
    command = in_container(
        rootfs,
        volume,
        image_config,
        env,
        [*image_config.entrypoint, *image_config.cmd],
        compile_cache=compile_cache,
    )
    service = ServiceProcess(command)
    try:
        # Ready only once compiled: a bucket takes a minute or two on two cores, cold.
        with httpx.Client(base_url=service.base_url(line_timeout=600), timeout=60) as http:
            scored = http.post("/rerank", json={"query": "q", "documents": ["a", "b", "c"]})
            (device,) = http.get("/info").json()["devices"]
        assert scored.status_code == 200, scored.text
        os.kill(child_pid(service.proc.pid), signal.SIGTERM)
        records = service.finish()
    finally:
        _stop(service)
    assert service.proc.returncode == 0
    return device, records


def _compiled_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    (compiled,) = [record for record in records if record["event"] == "runner_compiled"]
    return compiled


def test_the_image_compiles_at_run_time_and_a_restart_reads_what_it_compiled(
    image_config: ImageConfig, rootfs: Path, volume: Path, tmp_path: Path
) -> None:
    """``RERANKER_COMPILE=true`` on the CPU: inductor compiles with the image's own compiler,
    as its user, on the read-only root, into the compile-cache volume; a second container on
    the same volume reads the kernels from it instead of compiling them."""
    uid, gid = numeric_user(rootfs, image_config.user)
    compile_cache = tmp_path / "compile-cache"
    compile_cache.mkdir()
    os.chown(compile_cache, uid, gid)
    device, records = _compiled_start(image_config, rootfs, volume, compile_cache)
    assert device["runner"]["name"] == "packed"
    assert device["runner"]["compiled"] is True
    assert device["runner"]["compile_state"] == "compiled"
    cold = _compiled_event(records)
    assert cold["compile_cache_misses"] > 0
    assert any((compile_cache / "inductor").rglob("*.so")), "nothing compiled into the volume"

    device, records = _compiled_start(image_config, rootfs, volume, compile_cache)
    assert device["runner"]["compile_state"] == "compiled"
    warm = _compiled_event(records)
    # Read from the volume; now and then inductor keys one graph anew (seen once in five
    # restarts here), so "fewer compiled" rather than "none".
    assert warm["compile_cache_hits"] > 0
    assert warm["compile_cache_misses"] < cold["compile_cache_misses"]

"""What surrounds ``torch.compile`` in the service: the CPUs a container may use, the compile
cache folder it configures (over the default torch itself writes into the environment), and a
torch that lacks a feature the compiled runner needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch._inductor.config as inductor_config
from torch.nn.attention import flex_attention

from reranker_service.engine.runner.compiler import (
    compile_support,
    configure_compiler,
    usable_cpus,
)


def _cpu_max(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


def test_a_cpu_quota_bounds_the_cpus_a_container_may_use(tmp_path: Path) -> None:
    seen = len(os.sched_getaffinity(0))
    # 1.5 CPUs' worth of time per period: two compile workers, not one per host CPU.
    assert usable_cpus(_cpu_max(tmp_path, "150000 100000\n")) == min(seen, 2)
    assert usable_cpus(_cpu_max(tmp_path, "max 100000\n")) == seen
    assert usable_cpus(tmp_path / "no-cgroup-v2") == seen
    assert usable_cpus(_cpu_max(tmp_path, "10000 100000\n")) == 1


@pytest.fixture
def saved_environment() -> object:
    saved = {name: os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    threads = inductor_config.compile_threads
    yield
    inductor_config.compile_threads = threads
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.usefixtures("saved_environment")
def test_the_configured_cache_wins_over_the_default_torch_wrote(tmp_path: Path) -> None:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    cache_dir()  # what loading a checkpoint does: torch writes its default into the environment
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"]
    configure_compiler(tmp_path / "compile-cache", threads=2)
    assert cache_dir() == str(tmp_path / "compile-cache" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "compile-cache" / "triton")
    assert inductor_config.compile_threads == 2


def test_a_torch_without_a_feature_the_runner_needs_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert compile_support("cpu").available
    monkeypatch.delattr(flex_attention, "create_block_mask")
    support = compile_support("cpu")
    assert not support.available
    assert support.missing == "torch.nn.attention.flex_attention.create_block_mask"

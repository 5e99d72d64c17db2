"""What ``torch.compile`` needs around it to serve: this torch's compile features, the compile
cache and worker count configured once, each runner's compiled functions kept apart from every
other's, and the cache's own account of what it read.

Everything here is process-wide state of torch's (environment variables its compilers read,
dynamo's and inductor's configuration); the runner builder calls it once per start.
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2's CPU quota of this container: ``<quota> <period>`` or ``max <period>``."""


@dataclass(frozen=True)
class CompileSupport:
    """What this torch offers the compiled packed runner; ``missing`` says why it cannot run."""

    missing: str | None
    """None when every part is there; else the first one missing, for the operator."""

    @property
    def available(self) -> bool:
        return self.missing is None


def compile_support(device_type: str) -> CompileSupport:
    """Feature-detect what the compiled runner calls, so that one code base serves on the
    torch a GPU host has (2.11 on the last H200) as well as on the one the tests pin."""
    try:
        from torch.nn.attention import flex_attention as flex
    except ImportError:
        return CompileSupport("torch.nn.attention.flex_attention (torch 2.5 or later)")
    for name in ("create_block_mask", "flex_attention", "BlockMask"):
        if not hasattr(flex, name):
            return CompileSupport(f"torch.nn.attention.flex_attention.{name}")
    if not hasattr(torch, "compile"):
        return CompileSupport("torch.compile")
    import torch._dynamo.config as dynamo_config

    if not hasattr(dynamo_config, "recompile_limit") and not hasattr(
        dynamo_config, "cache_size_limit"
    ):
        return CompileSupport("torch._dynamo.config.recompile_limit")
    if device_type == "cuda":
        for name in ("CUDAGraph", "graph", "graph_pool_handle", "set_stream"):
            if not hasattr(torch.cuda, name):
                return CompileSupport(f"torch.cuda.{name}")
    return CompileSupport(None)


def usable_cpus(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, within its container's CPU quota (a pod
    limited to 2 CPUs on a 64-core host may run 2, although it sees 64)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def configure_compiler(cache_folder: Path | None, threads: int) -> None:
    """Point inductor's and Triton's caches into ``cache_folder`` and bound inductor's compile
    workers to ``threads``; before the first compile.

    The cache folders are set, not defaulted: loading a checkpoint imports ``torch._dynamo``,
    whose first look at its cache folder writes the default (``/tmp/torchinductor_<user>``)
    into the environment, so a default set afterwards would change nothing."""
    import torch._inductor.config as inductor_config

    if cache_folder is not None:
        cache_folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_folder / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(cache_folder / "triton")
    inductor_config.compile_threads = max(1, threads)


def allow_recompiles(entries: int) -> None:
    """Let dynamo keep ``entries`` static graphs of one compiled function (one per bucket)
    before it gives up on it; an operator's higher limit is kept. The name changed in torch
    2.6 (``cache_size_limit`` before)."""
    import torch._dynamo.config as dynamo_config

    for name, wanted in (
        ("recompile_limit", entries),
        ("accumulated_recompile_limit", 4 * entries),
    ):
        if not hasattr(dynamo_config, name):
            name = name.replace("recompile_limit", "cache_size_limit")
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), wanted))


def isolated(function: F, owner: str) -> F:
    """A copy of ``function`` with a code object of its own. Dynamo keeps its compiled graphs,
    and counts them against its recompile limit, per code object: compiled from this copy, one
    runner's buckets neither share the limit with another runner's (three GPUs of 13 buckets
    each would pass it) nor are looked up among their graphs."""
    code = function.__code__.replace(co_name=f"{function.__name__}__{_identifier(owner)}")
    copy = types.FunctionType(
        code,
        function.__globals__,
        code.co_name,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = f"{function.__qualname__}[{owner}]"
    copy.__doc__ = function.__doc__
    copy.__module__ = function.__module__
    return copy  # type: ignore[return-value]


def compiled_entries(function: Callable[..., Any]) -> int:
    """The graphs dynamo keeps for ``function``'s code object."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(function.__code__))


def _identifier(text: str) -> str:
    return "".join(character if character.isalnum() else "_" for character in text)


@dataclass(frozen=True)
class CacheReads:
    """Inductor's compiled-graph cache, as counted in this process."""

    hits: int
    misses: int

    def since(self, earlier: CacheReads) -> CacheReads:
        return CacheReads(self.hits - earlier.hits, self.misses - earlier.misses)


def cache_reads() -> CacheReads:
    """Graphs inductor found in its cache (memory or folder) and those it compiled."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return CacheReads(int(inductor["fxgraph_cache_hit"]), int(inductor["fxgraph_cache_miss"]))

"""Which runner a replica gets, and getting it ready: the packed runner on a GPU, compiled over
token-count buckets with CUDA graphs for the small ones; the padded runner on the CPU, where
the benchmark measures it faster (docs/benchmark.md)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch

from reranker_service.engine.runner.packed import PackedOptions, PackedRunner
from reranker_service.engine.runner.packing import token_buckets
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import ModelRunner
from reranker_service.engine.runner.qwen3_decoder import PackedDecoder, UnpackableModelError
from reranker_service.engine.scoring import ModelDescription, ModelLoadError, default_batch_tokens

logger = structlog.get_logger(__name__)

GRAPH_TOKENS = 4096
"""Buckets up to this size replay from CUDA graphs: below it a pass is bound by kernel launches
(an eager pass of 16 tokens and one of 4 096 both take ~37 ms on an H200)."""


@dataclass(frozen=True)
class RunnerOptions:
    runner: str = "auto"
    """``auto``, ``padded`` or ``packed``."""
    compile: str = "auto"
    """``auto``, ``true`` or ``false``."""
    compile_cache: Path | None = None
    max_batch_tokens: int | None = None
    """The operator's pass budget; the largest bucket holds it (or the device's default)."""


@dataclass(frozen=True)
class RunnerPlan:
    """What a replica on one device type gets."""

    packed: bool
    compiled: bool


def plan_runner(options: RunnerOptions, device_type: str, dtype_name: str) -> RunnerPlan:
    """``auto``: packed and compiled on a GPU; padded and eager on the CPU. Compiling needs the
    packed runner, so asking for it on the CPU packs too."""
    compiled = options.compile == "true" or (options.compile == "auto" and device_type == "cuda")
    if options.runner == "padded" and options.compile == "true":
        raise ModelLoadError(
            "RERANKER_COMPILE=true compiles the packed runner; RERANKER_RUNNER=padded has none"
        )
    packed = options.runner == "packed" or (
        options.runner == "auto" and (device_type == "cuda" or compiled)
    )
    if dtype_name == "int8" and packed:
        if options.runner == "packed" or options.compile == "true":
            raise ModelLoadError(
                "RERANKER_DTYPE=int8 runs on the padded runner only (RERANKER_RUNNER=padded, "
                "RERANKER_COMPILE=false)"
            )
        packed = compiled = False
    return RunnerPlan(packed=packed, compiled=compiled and packed)


def use_compile_cache(folder: Path) -> None:
    """Point inductor's and Triton's caches into ``folder``, so that a restart (or a new pod on
    the same volume) reuses what an earlier start compiled. Both read their folder from the
    environment when they compile; a folder the operator set for either is kept."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))


def build_runner(
    backbone: torch.nn.Module,
    score_direction: torch.Tensor,
    pad_token_id: int,
    description: ModelDescription,
    plan: RunnerPlan,
    options: RunnerOptions,
) -> ModelRunner:
    """The replica's runner, ready to serve: a compiled one has compiled (and captured) every
    bucket, each logged with its seconds."""
    if not plan.packed:
        return PaddedRunner(backbone, score_direction, pad_token_id, description)
    try:
        decoder = PackedDecoder(backbone)
    except UnpackableModelError as exc:
        if options.runner == "packed":
            raise ModelLoadError(f"the packed runner cannot serve this checkpoint: {exc}") from exc
        logger.warning("packed_runner_unavailable", reason=str(exc), device=description.device)
        return PaddedRunner(backbone, score_direction, pad_token_id, description)
    largest = options.max_batch_tokens or default_batch_tokens(
        description.device_type, description.max_length
    )
    largest = max(largest, description.max_length)
    on_gpu = description.device_type == "cuda"
    runner = PackedRunner(
        decoder,
        score_direction,
        pad_token_id,
        description,
        PackedOptions(
            buckets=token_buckets(largest),
            compiled=plan.compiled,
            graph_tokens=GRAPH_TOKENS if on_gpu and plan.compiled else 0,
        ),
    )
    if plan.compiled:
        if options.compile_cache is not None:
            use_compile_cache(options.compile_cache)
        started = time.perf_counter()
        buckets = runner.prepare()
        logger.info(
            "runner_compiled",
            device=description.device,
            seconds=round(time.perf_counter() - started, 3),
            buckets=[tokens for tokens, _, _ in buckets],
            cuda_graph_buckets=list(runner.graphed_buckets),
            compile_cache=str(options.compile_cache) if options.compile_cache else None,
        )
    return runner

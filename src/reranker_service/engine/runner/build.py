"""Which runner a replica gets, and how its compiled runner comes.

- ``RERANKER_COMPILE=background`` (``auto`` on a GPU): the replica is ready at once on the
  padded runner, which needs no compiler; the packed runner is compiled (and its small buckets
  captured as CUDA graphs) in the background, proven by a self-check and swapped in between two
  passes. Any failure leaves the padded runner serving.
- ``true``: the same compiled runner, before the replica is ready; a failure stops start-up.
- ``false`` (``auto`` on the CPU, where the benchmark measures the padded runner faster):
  nothing is compiled; the padded runner serves, or the packed one eagerly when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog
import torch

from reranker_service.engine.runner.compiler import (
    compile_support,
    configure_compiler,
    usable_cpus,
)
from reranker_service.engine.runner.packed import PackedOptions, PackedRunner
from reranker_service.engine.runner.packing import token_buckets
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import ModelRunner, PassBatch
from reranker_service.engine.runner.qwen3_decoder import PackedDecoder, UnpackableModelError
from reranker_service.engine.runner.self_check import (
    ProbeRequest,
    probe_passes,
    score_bound,
)
from reranker_service.engine.scoring import ModelDescription, ModelLoadError, default_batch_tokens

logger = structlog.get_logger(__name__)

GRAPH_TOKENS = 4096
"""Buckets up to this size replay from CUDA graphs: below it a pass is bound by kernel launches
(an eager pass of 16 tokens and one of 4 096 both take ~37 ms on an H200)."""

CompileWhen = Literal["never", "background", "foreground"]


@dataclass(frozen=True)
class RunnerOptions:
    runner: str = "auto"
    """``auto``, ``padded`` or ``packed``."""
    compile: str = "auto"
    """``auto``, ``background``, ``true`` or ``false``."""
    compile_cache: Path | None = None
    max_batch_tokens: int | None = None
    """The operator's pass budget; the largest bucket holds it (or the device's default)."""


@dataclass(frozen=True)
class RunnerPlan:
    """What a replica on one device type gets."""

    serving: Literal["padded", "packed"]
    """The runner it becomes ready on."""
    compile: CompileWhen
    """When the compiled packed runner takes over: never, after ready, or before it."""


def plan_runner(options: RunnerOptions, device_type: str) -> RunnerPlan:
    """``auto`` compiles in the background on a GPU and not at all on the CPU. Compiling
    makes the packed runner, which ``RERANKER_RUNNER=padded`` rules out."""
    mode = options.compile
    if mode == "auto":
        mode = "background" if device_type == "cuda" else "false"
        if options.runner == "padded":
            mode = "false"
    compiles = mode in ("true", "background")
    if compiles and options.runner == "padded":
        raise ModelLoadError(
            f"RERANKER_COMPILE={mode} compiles the packed runner; RERANKER_RUNNER=padded has none"
        )
    if mode == "true":
        return RunnerPlan(serving="padded", compile="foreground")
    if mode == "background":
        return RunnerPlan(serving="padded", compile="background")
    return RunnerPlan(serving="packed" if options.runner == "packed" else "padded", compile="never")


@dataclass(frozen=True)
class PackedRunnerUpgrade:
    """The compiled packed runner of one replica, as ``RunnerUpgrade``: built on the
    replica's weights (shared, not copied) when the engine asks."""

    decoder: PackedDecoder = field(repr=False)
    backbone: torch.nn.Module = field(repr=False)
    score_direction: torch.Tensor = field(repr=False)
    pad_token_id: int
    description: ModelDescription
    options: PackedOptions
    foreground: bool
    probe: Sequence[PassBatch] = field(default=(), repr=False)
    score_bound: float = 1e-4

    def build(self) -> PackedRunner:
        support = compile_support(self.description.device_type)
        if not support.available:
            raise ModelLoadError(f"this torch ({torch.__version__}) lacks {support.missing}")
        return PackedRunner(
            self.decoder,
            self.score_direction,
            self.pad_token_id,
            self.description,
            self.options,
        )

    def reference(self) -> PaddedRunner:
        return PaddedRunner(
            self.backbone, self.score_direction, self.pad_token_id, self.description
        )


def packed_options(
    description: ModelDescription, options: RunnerOptions, *, compiled: bool
) -> PackedOptions:
    """Buckets up to the pass budget (a whole pair at least); graphs up to ``GRAPH_TOKENS``
    on a GPU, compiled."""
    largest = options.max_batch_tokens or default_batch_tokens(
        description.device_type, description.max_length
    )
    largest = max(largest, description.max_length)
    graphed = description.device_type == "cuda" and compiled
    return PackedOptions(
        buckets=token_buckets(largest),
        compiled=compiled,
        graph_tokens=GRAPH_TOKENS if graphed else 0,
    )


def prepare_compiler(options: RunnerOptions) -> None:
    """Once per process, before anything compiles: the compile cache folder, and inductor's
    compile workers bounded by the CPUs the container may use (it would start one per CPU it
    sees), unless the operator set them."""
    threads = int(os.environ.get("TORCHINDUCTOR_COMPILE_THREADS", 0)) or usable_cpus()
    configure_compiler(options.compile_cache, threads)
    logger.info(
        "compiler_configured",
        compile_cache=str(options.compile_cache) if options.compile_cache else None,
        compile_threads=threads,
    )


def build_runner(
    backbone: torch.nn.Module,
    score_direction: torch.Tensor,
    pad_token_id: int,
    description: ModelDescription,
    plan: RunnerPlan,
    options: RunnerOptions,
    probe: Sequence[ProbeRequest] = (),
) -> tuple[ModelRunner, PackedRunnerUpgrade | None]:
    """The runner a replica is ready on, and the compiled runner to take over from it (None
    where nothing is compiled, or the packed decoder cannot compute the checkpoint)."""
    padded = PaddedRunner(backbone, score_direction, pad_token_id, description)
    wants_packed = plan.serving == "packed" or plan.compile != "never"
    if not wants_packed:
        return padded, None
    try:
        decoder = PackedDecoder(backbone)
    except UnpackableModelError as exc:
        if options.runner == "packed" or plan.compile == "foreground":
            raise ModelLoadError(f"the packed runner cannot serve this checkpoint: {exc}") from exc
        logger.warning("packed_runner_unavailable", reason=str(exc), device=description.device)
        return padded, None
    if plan.compile == "never":
        eager = PackedRunner(
            decoder,
            score_direction,
            pad_token_id,
            description,
            packed_options(description, options, compiled=False),
        )
        return eager, None
    compiled_options = packed_options(description, options, compiled=True)
    upgrade = PackedRunnerUpgrade(
        decoder=decoder,
        backbone=backbone,
        score_direction=score_direction,
        pad_token_id=pad_token_id,
        description=description,
        options=compiled_options,
        foreground=plan.compile == "foreground",
        probe=probe_passes(probe, compiled_options.buckets) if probe else (),
        score_bound=score_bound(description.dtype),
    )
    return padded, upgrade

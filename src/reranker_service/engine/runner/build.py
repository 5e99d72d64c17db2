"""Which runner a replica gets, and how its compiled runner comes. Runners are built by name
from one registry (``RUNNER_FACTORIES``), whose names ``names`` lists without torch for the
settings; ``auto`` and ``RERANKER_COMPILE`` choose among them:

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

import structlog
import torch

from reranker_service.engine.runner.compiler import (
    compile_support,
    configure_compiler,
    usable_cpus,
)
from reranker_service.engine.runner.names import (
    COMPILED_RUNNER,
    EAGER_RUNNER,
    RUNNER_NAMES,
    RunnerName,
    is_runner_name,
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

_COMPILE_WHEN: Final[Mapping[str, CompileWhen]] = MappingProxyType(
    {"false": "never", "background": "background", "true": "foreground"}
)
"""``RERANKER_COMPILE`` (``auto`` resolved per device) → when the compiled runner takes over."""


@dataclass(frozen=True)
class RunnerOptions:
    runner: str = "auto"
    """``auto`` or a registered runner's name (``names.RUNNER_NAMES``)."""
    compile: str = "auto"
    """``auto``, ``background``, ``true`` or ``false``."""
    compile_cache: Path | None = None
    max_batch_tokens: int | None = None
    """The operator's pass budget; the largest bucket holds it (or the device's default)."""

    def __post_init__(self) -> None:
        if self.runner != "auto" and not is_runner_name(self.runner):
            raise ValueError(
                f"unknown runner {self.runner!r}: auto or one of {', '.join(RUNNER_NAMES)}"
            )
        if self.compile != "auto" and self.compile not in _COMPILE_WHEN:
            raise ValueError(
                f"unknown compile setting {self.compile!r}: auto, {', '.join(_COMPILE_WHEN)}"
            )

    @property
    def named_runner(self) -> RunnerName | None:
        """The runner asked for by name; None for ``auto``."""
        return self.runner if is_runner_name(self.runner) else None


@dataclass(frozen=True)
class RunnerPlan:
    """What a replica on one device type gets."""

    kind: RunnerName
    """The runner it becomes ready on."""
    compile: CompileWhen
    """When the compiled packed runner takes over: never, after ready, or before it."""


def plan_runner(options: RunnerOptions, device_type: str) -> RunnerPlan:
    """``auto`` compiles in the background on a GPU and not at all on the CPU. Compiling
    makes the packed runner, which naming any other runner rules out."""
    named = options.named_runner
    mode = options.compile
    if mode == "auto":
        compiled_here = device_type == "cuda" and named in (None, COMPILED_RUNNER)
        mode = "background" if compiled_here else "false"
    compile = _COMPILE_WHEN[mode]
    if compile == "never":
        return RunnerPlan(kind=named or EAGER_RUNNER, compile="never")
    if named not in (None, COMPILED_RUNNER):
        raise ModelLoadError(
            f"RERANKER_COMPILE={mode} compiles the {COMPILED_RUNNER} runner; "
            f"RERANKER_RUNNER={named} has none"
        )
    return RunnerPlan(kind=EAGER_RUNNER, compile=compile)


@dataclass(frozen=True)
class ReplicaWeights:
    """What every runner of one replica is built from: its weights, on its device."""

    backbone: torch.nn.Module = field(repr=False)
    score_direction: torch.Tensor = field(repr=False)
    pad_token_id: int
    description: ModelDescription


RunnerFactory = Callable[[ReplicaWeights, RunnerOptions], ModelRunner]
"""Builds one registered runner, eager, ready to serve; ``ModelLoadError`` where it cannot
serve the checkpoint."""


def _padded_runner(weights: ReplicaWeights, options: RunnerOptions) -> ModelRunner:
    return PaddedRunner(
        weights.backbone, weights.score_direction, weights.pad_token_id, weights.description
    )


def _packed_runner(weights: ReplicaWeights, options: RunnerOptions) -> ModelRunner:
    return PackedRunner(
        _packed_decoder(weights.backbone),
        weights.score_direction,
        weights.pad_token_id,
        weights.description,
        packed_options(weights.description, options, compiled=False),
    )


def _packed_decoder(backbone: torch.nn.Module) -> PackedDecoder:
    try:
        return PackedDecoder(backbone)
    except UnpackableModelError as exc:
        raise ModelLoadError(f"the packed runner cannot serve this checkpoint: {exc}") from exc


RUNNER_FACTORIES: Final[Mapping[RunnerName, RunnerFactory]] = MappingProxyType(
    {"padded": _padded_runner, "packed": _packed_runner}
)
"""The runner registry: every name ``RERANKER_RUNNER`` accepts (``names.RunnerName``) and what
builds it."""

if tuple(RUNNER_FACTORIES) != RUNNER_NAMES:
    raise ImportError(
        f"the runner registry builds {tuple(RUNNER_FACTORIES)}, but names.RunnerName lists "
        f"{RUNNER_NAMES}: a runner needs both, in the same order"
    )


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
    """The runner a replica is ready on (the plan's, from the registry), and the compiled
    runner to take over from it (None where nothing is compiled, or the packed decoder cannot
    compute the checkpoint)."""
    weights = ReplicaWeights(backbone, score_direction, pad_token_id, description)
    runner = RUNNER_FACTORIES[plan.kind](weights, options)
    if plan.compile == "never":
        return runner, None
    return runner, _compiled_upgrade(weights, plan, options, probe)


def _compiled_upgrade(
    weights: ReplicaWeights,
    plan: RunnerPlan,
    options: RunnerOptions,
    probe: Sequence[ProbeRequest],
) -> PackedRunnerUpgrade | None:
    """None where the packed decoder cannot compute the checkpoint and nobody insisted on it
    (neither ``RERANKER_RUNNER=packed`` nor ``RERANKER_COMPILE=true``)."""
    try:
        decoder = _packed_decoder(weights.backbone)
    except ModelLoadError as exc:
        if options.named_runner == COMPILED_RUNNER or plan.compile == "foreground":
            raise
        reason = str(exc.__cause__ or exc)
        device = weights.description.device
        logger.warning("packed_runner_unavailable", reason=reason, device=device)
        return None
    compiled_options = packed_options(weights.description, options, compiled=True)
    return PackedRunnerUpgrade(
        decoder=decoder,
        backbone=weights.backbone,
        score_direction=weights.score_direction,
        pad_token_id=weights.pad_token_id,
        description=weights.description,
        options=compiled_options,
        foreground=plan.compile == "foreground",
        probe=probe_passes(probe, compiled_options.buckets) if probe else (),
        score_bound=score_bound(weights.description.dtype),
    )

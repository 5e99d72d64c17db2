"""Every contender ``rerank_bench.py --contenders`` may name, and how it is built: one registry,
name → factory, in the order the cells run them. The ratio targets name contenders by these keys
(``targets.py`` checks them against the registry on import), ``--contenders`` offers exactly
them, and a contender asked for by name that cannot run here stops the run before it starts.
An engine contender per runner (``engine-<runner>``) comes from the service's runner names."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, NewType

from contenders import (
    BestFixedBudget,
    Contender,
    CrossEncoderLoop,
    EngineInProcess,
    ModelCardBaseline,
    OpenVinoCrossEncoderLoop,
    ServiceOverHttp,
    build_seq_cls_checkpoint,
)
from reranker_service.engine.runner.build import RunnerOptions
from reranker_service.engine.runner.names import COMPILED_RUNNER, RUNNER_NAMES

ContenderName = NewType("ContenderName", str)
"""A key of ``CONTENDERS``: what ``--contenders`` takes."""

CARD: Final = ContenderName("card")
CROSSENCODER: Final = ContenderName("crossencoder")
OPENVINO: Final = ContenderName("openvino")
ENGINE: Final = ContenderName("engine")
ENGINE_NO_REUSE: Final = ContenderName("engine-no-reuse")
ENGINE_WORKERS: Final = ContenderName("engine-workers")
ENGINE_COMPILED: Final = ContenderName("engine-compiled")
SERVICE: Final = ContenderName("service")
REFERENCE: Final = ContenderName("reference")


def engine_on(runner: str) -> ContenderName:
    """The engine contender on one runner, by the runner's name."""
    return ContenderName(f"engine-{runner}")


OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
"""OpenVINO's inference precision for each --dtype; auto leaves OpenVINO's default."""

BENCH_EXTRAS = "the bench extras: pip install -e '.[bench]'"


@dataclass(frozen=True)
class BenchOptions:
    """The run's arguments the contenders are built with."""

    device: str
    dtype: str
    max_length: int
    runner: str = "auto"
    compile: str = "auto"
    workers_device: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchOptions:
        return cls(
            args.device,
            args.dtype,
            args.max_length,
            args.runner,
            args.compile,
            args.workers_device,
        )

    @property
    def runner_options(self) -> RunnerOptions:
        """The engine and service contenders' runner (``--runner``, ``--compile``)."""
        return RunnerOptions(runner=self.runner, compile=self.compile)


@dataclass
class BenchRun:
    """What one run's contenders are built from, and what they leave to stop."""

    options: BenchOptions
    checkpoint: str
    scratch: Path
    startup: dict[str, float] = field(default_factory=dict)
    """The service's seconds to ready, per start (cold, warm)."""
    engines: list[EngineInProcess] = field(default_factory=list)
    service: ServiceOverHttp | None = None
    _seq_cls: str | None = None

    def seq_cls_checkpoint(self) -> str:
        """The peers' one sequence-classification form of the weights, built on first use."""
        if self._seq_cls is None:
            self._seq_cls = build_seq_cls_checkpoint(self.checkpoint, str(self.scratch / "seq-cls"))
        return self._seq_cls

    async def stop(self) -> None:
        for engine in self.engines:
            await engine.stop()
        if self.service is not None:
            await self.service.stop()


Built = Contender | BestFixedBudget
"""A contender run cell by cell, or the best fixed budget (one cell per workload)."""
ContenderFactory = Callable[[BenchRun], Awaitable[Built]]


@dataclass(frozen=True)
class ContenderSpec:
    build: ContenderFactory
    library: str | None = None
    """The module it measures (a peer), where it needs one beyond the service's own."""
    cpu_only: bool = False

    def cannot_run(self, device: str) -> str | None:
        """Why it cannot run on ``device`` in this environment; None when it can."""
        if self.library is not None and importlib.util.find_spec(self.library) is None:
            return f"{self.library} is not installed ({BENCH_EXTRAS})"
        if self.cpu_only and device != "cpu":
            return "it is the CPU peer (--device cpu)"
        return None


async def _card(run: BenchRun) -> Built:
    options = run.options
    return ModelCardBaseline(run.checkpoint, options.device, options.dtype, options.max_length)


async def _crossencoder(run: BenchRun) -> Built:
    options = run.options
    return CrossEncoderLoop(run.seq_cls_checkpoint(), options.device, options.max_length)


async def _openvino(run: BenchRun) -> Built:
    # The format the others are given; under auto, OpenVINO's own default (bf16 where the CPU
    # computes it), as the CrossEncoder backend runs it.
    precision = OPENVINO_PRECISIONS.get(run.options.dtype)
    openvino = OpenVinoCrossEncoderLoop(run.seq_cls_checkpoint(), run.options.max_length, precision)
    print(f"  openvino peer computes in {openvino.precision}", flush=True)
    return openvino


def _all_workers(device: str) -> str:
    """Two CPU workers, or one per GPU."""
    return "cpu,cpu" if device == "cpu" else "cuda:all"


def _engine(
    *,
    prefix_reuse: bool = True,
    workers: bool = False,
    runner: RunnerOptions | None = None,
    name: str | None = None,
) -> ContenderFactory:
    """An engine in this process: on ``--device`` (or, with ``workers``, one worker per entry of
    ``--workers-device``), on ``runner`` (default: ``--runner`` and ``--compile``)."""

    async def build(run: BenchRun) -> Built:
        options = run.options
        runner_options = runner or options.runner_options
        device = options.device
        if workers:
            device = options.workers_device or _all_workers(options.device)
        # The first engine measures the pass cost; the others of the same runner start from
        # the same curve, so they batch alike and differ only in what they compare
        # (measurements move between runs).
        same_geometry = [e for e in run.engines if e.runner_options == runner_options]
        engine = EngineInProcess(
            run.checkpoint,
            device,
            options.dtype,
            options.max_length,
            prefix_reuse=prefix_reuse,
            pass_costs=same_geometry[0].pass_costs if same_geometry else None,
            runner=runner_options,
            name=name,
        )
        await engine.start()
        run.engines.append(engine)
        return engine

    return build


async def _service(run: BenchRun) -> Built:
    """The service, started twice on one fresh compile cache: cold, then warm. Each start's
    seconds to ready are printed and put in ``run.startup``; the warm one serves the cells."""
    options = run.options
    cache = str(run.scratch / "compile-cache")
    for start in ("cold", "warm"):
        service = ServiceOverHttp(
            run.checkpoint,
            options.device,
            options.dtype,
            options.max_length,
            runner=options.runner,
            compile=options.compile,
            compile_cache=cache,
        )
        run.service = service
        await service.start()
        compiled = service.compiled_seconds
        print(
            f"  service start-up to ready, {start} compile cache: {service.startup_seconds:.1f} s"
            + (
                f"; compiled runner serving after {compiled:.1f} s ({service.compile_states})"
                if compiled is not None
                else ""
            )
        )
        run.startup[start] = round(service.startup_seconds, 1)
        if compiled is not None:
            run.startup[f"{start}, compiled"] = round(compiled, 1)
        if start == "cold":
            await service.stop()
    return service


async def _reference(run: BenchRun) -> Built:
    options = run.options
    return BestFixedBudget(run.checkpoint, options.device, options.dtype, options.max_length)


CONTENDERS: Final[Mapping[ContenderName, ContenderSpec]] = MappingProxyType(
    {
        CARD: ContenderSpec(_card),
        # The peers, on one seq-cls form of the weights.
        CROSSENCODER: ContenderSpec(_crossencoder, library="sentence_transformers"),
        OPENVINO: ContenderSpec(_openvino, library="openvino", cpu_only=True),
        ENGINE: ContenderSpec(_engine()),
        ENGINE_NO_REUSE: ContenderSpec(_engine(prefix_reuse=False)),
        ENGINE_WORKERS: ContenderSpec(_engine(workers=True)),
        # Each runner by name, side by side with the default.
        **{
            engine_on(runner): ContenderSpec(
                _engine(runner=RunnerOptions(runner=runner), name=f"engine, {runner}")
            )
            for runner in RUNNER_NAMES
        },
        ENGINE_COMPILED: ContenderSpec(
            _engine(
                runner=RunnerOptions(runner=COMPILED_RUNNER, compile="true"),
                name=f"engine, {COMPILED_RUNNER}, compiled",
            )
        ),
        SERVICE: ContenderSpec(_service),
        REFERENCE: ContenderSpec(_reference),
    }
)
"""The contender registry, in the order a cell runs them."""

DEFAULT_CONTENDERS: Final = (CARD, CROSSENCODER, ENGINE, ENGINE_NO_REUSE, SERVICE, REFERENCE)


def check_registered(names: Iterable[str], where: str) -> None:
    """Raise ``LookupError`` unless every name is a registered contender."""
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown:
        raise LookupError(
            f"{where} names {', '.join(map(repr, unknown))}, which the contender registry "
            f"does not build (it has {', '.join(CONTENDERS)})"
        )


check_registered(DEFAULT_CONTENDERS, "DEFAULT_CONTENDERS")


@dataclass(frozen=True)
class Selection:
    """The contenders a run measures, and those left out with why."""

    names: tuple[ContenderName, ...]
    skipped: tuple[str, ...] = ()
    """One line per contender of the defaults that cannot run here."""


class ContenderUnavailableError(Exception):
    """A contender named on the command line cannot run here; the message says why."""


def select(requested: Sequence[str] | None, device: str) -> Selection:
    """The contenders to build, in the registry's order: ``requested`` (all of them, or
    ``ContenderUnavailableError``), or the defaults where None (those that can run)."""
    check_registered(requested or (), "--contenders")
    names = DEFAULT_CONTENDERS if requested is None else tuple(map(ContenderName, requested))
    chosen: list[ContenderName] = []
    skipped: list[str] = []
    for name, spec in CONTENDERS.items():
        if name not in names:
            continue
        reason = spec.cannot_run(device)
        if reason is None:
            chosen.append(name)
        elif requested is None:
            skipped.append(f"  {name} skipped: {reason}")
        else:
            raise ContenderUnavailableError(f"--contenders {name} cannot run here: {reason}")
    return Selection(tuple(chosen), tuple(skipped))


async def build_contenders(
    names: Iterable[ContenderName], run: BenchRun
) -> dict[ContenderName, Built]:
    """Each named contender, built (and started) in the registry's order; ``run.stop()`` stops
    what was started, also when a later one fails."""
    wanted = set(names)
    check_registered(wanted, "build_contenders")
    return {name: await spec.build(run) for name, spec in CONTENDERS.items() if name in wanted}

"""The figures the bench derives from its cells (ratios of one contender to another, per workload
and concurrency) and the issues' targets on them, named by the contender registry's keys.

Every contender a figure compares, and every workload a target is judged on, is checked on
import: a target on a contender the registry lacks (or a workload the bench does not run) fails
there, rather than being left unjudged in every run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from contender_registry import (
    CARD,
    CONTENDERS,
    CROSSENCODER,
    ENGINE,
    ENGINE_NO_REUSE,
    ENGINE_WORKERS,
    OPENVINO,
    REFERENCE,
    SERVICE,
    ContenderName,
)
from contenders import BestFixedBudget
from workloads import WORKLOADS

REFERENCE_NAME = BestFixedBudget.name
"""The reference's name in the figures (its cells add the budget: ``best fixed budget (1024)``)."""


class MeasuredCell(Protocol):
    """What a figure reads of a cell."""

    @property
    def workload(self) -> str: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def key(self) -> ContenderName: ...
    @property
    def pairs_per_second(self) -> float: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def http_overhead_p50_ms(self) -> float | None: ...


@dataclass(frozen=True)
class Figure:
    """One number per workload and concurrency, from the cells of ``contenders`` (in order)."""

    label: str
    contenders: tuple[ContenderName, ...]
    value: Callable[..., float | None]
    only_at: int | None = None
    """The one concurrency it is computed at; None: every one."""

    def key(self, workload: str, concurrency: int) -> str:
        """Its name among the printed ratios."""
        return f"{self.label} {workload} c={concurrency}"


def significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant figures: a cell's pairs/s, which the ratios are taken
    from, keeps its precision at 0.9 pairs/s (a 0.6B model on a CPU) as at 900."""
    return float(f"{value:.{digits}g}")


def _pairs_ratio(numerator: MeasuredCell, denominator: MeasuredCell) -> float:
    return round(numerator.pairs_per_second / denominator.pairs_per_second, 2)


def pairs_ratio(label: str, numerator: ContenderName, denominator: ContenderName) -> Figure:
    return Figure(f"{label} pairs/s", (numerator, denominator), _pairs_ratio)


SERVICE_VS_CROSSENCODER = pairs_ratio("service/crossencoder", SERVICE, CROSSENCODER)
SERVICE_VS_OPENVINO = pairs_ratio("service/openvino", SERVICE, OPENVINO)
SERVICE_VS_REFERENCE = pairs_ratio(f"service/{REFERENCE_NAME}", SERVICE, REFERENCE)
ENGINE_VS_REFERENCE = pairs_ratio(f"engine/{REFERENCE_NAME}", ENGINE, REFERENCE)
NO_REUSE_VS_REFERENCE = pairs_ratio(
    f"engine reuse off/{REFERENCE_NAME}", ENGINE_NO_REUSE, REFERENCE
)
REUSE_ON_OFF = pairs_ratio("reuse on/off", ENGINE, ENGINE_NO_REUSE)
ENGINE_VS_CARD = pairs_ratio("engine/card", ENGINE, CARD)
SERVICE_VS_CARD = pairs_ratio("service/card", SERVICE, CARD)
SERVICE_VS_ENGINE = pairs_ratio("service/engine", SERVICE, ENGINE)
WORKERS_VS_ENGINE = pairs_ratio("workers/engine", ENGINE_WORKERS, ENGINE)
SERVICE_VS_CARD_P50 = Figure(
    "service/card p50",
    (SERVICE, CARD),
    lambda service, card: round(service.p50_ms / card.p50_ms, 2),
    only_at=1,
)
SERVICE_MINUS_ENGINE_P50 = Figure(
    "service-engine p50 ms",
    (SERVICE, ENGINE),
    lambda service, engine: round(service.p50_ms - engine.p50_ms, 2),
    only_at=1,
)
HTTP_OVERHEAD = Figure(
    "service HTTP overhead p50 ms",
    # Beside the engine: what the engine does not account for, alone on it, is the HTTP path.
    (SERVICE, ENGINE),
    lambda service, engine: service.http_overhead_p50_ms,
    only_at=1,
)

FIGURES: Final[tuple[Figure, ...]] = (
    SERVICE_VS_CROSSENCODER,
    SERVICE_VS_OPENVINO,
    SERVICE_VS_REFERENCE,
    ENGINE_VS_REFERENCE,
    NO_REUSE_VS_REFERENCE,
    REUSE_ON_OFF,
    ENGINE_VS_CARD,
    SERVICE_VS_CARD,
    SERVICE_VS_ENGINE,
    WORKERS_VS_ENGINE,
    SERVICE_VS_CARD_P50,
    SERVICE_MINUS_ENGINE_P50,
    HTTP_OVERHEAD,
)
"""In the order they are printed, per workload and concurrency."""


@dataclass(frozen=True)
class Target:
    """A bound on one figure at one workload and concurrency."""

    title: str
    figure: Figure
    workload: str
    concurrency: int
    minimum: float | None = None
    maximum: float | None = None
    """Exclusive."""

    def judged(self, ratios: Mapping[str, Any]) -> str | None:
        """``- met: ...`` or ``- MISSED: ...``; None where the run did not measure it."""
        value = ratios.get(self.figure.key(self.workload, self.concurrency))
        if value is None:
            return None
        met = (self.minimum is None or value >= self.minimum) and (
            self.maximum is None or value < self.maximum
        )
        bound = f">= {self.minimum}" if self.minimum is not None else f"< {self.maximum}"
        return f"- {'met' if met else 'MISSED'}: {self.title} = {value} (target {bound})"


def _at(figure: Figure, title: str, minima: Mapping[tuple[str, int], float]) -> tuple[Target, ...]:
    """A lower bound per (workload, concurrency); ``title`` formats with both."""
    return tuple(
        Target(title.format(workload=w, c=c), figure, w, c, minimum=m)
        for (w, c), m in minima.items()
    )


TARGET_CONCURRENCY = 16
HTTP_OVERHEAD_TARGET_MS = 2.5
_C = TARGET_CONCURRENCY

TARGETS: Final[tuple[Target, ...]] = (
    # The engine-speed issue's, judged at concurrency 16.
    *_at(
        REUSE_ON_OFF,
        "engine reuse on/off, {workload}, c={c}",
        {("short", _C): 1.6, ("rag", _C): 1.15, ("long", _C): 0.97},
    ),
    *_at(
        SERVICE_VS_REFERENCE,
        "service c={c} / " + REFERENCE_NAME + ", {workload}",
        {("short", _C): 1.4, ("rag", _C): 1.05, ("long", _C): 0.9},
    ),
    *(
        Target(
            f"HTTP overhead p50 ms, {w}, c=1", HTTP_OVERHEAD, w, 1, maximum=HTTP_OVERHEAD_TARGET_MS
        )
        for w in WORKLOADS
    ),
    # The CPU issue's: against the best fixed budget at concurrency 8, and against the
    # OpenVINO peer by concurrency.
    *_at(
        SERVICE_VS_REFERENCE,
        "service c={c} / " + REFERENCE_NAME + ", {workload}",
        {("short", 8): 1.2, ("rag", 8): 1.2},
    ),
    *_at(
        SERVICE_VS_OPENVINO,
        "service / openvino, {workload}, c={c}",
        {(w, c): m for w in WORKLOADS for c, m in ((8, 2.0), (1, 1.5))},
    ),
    # The GPU issue's, where their cells ran.
    *_at(SERVICE_VS_CROSSENCODER, "service / crossencoder, {workload}, c={c}", {("rag", 64): 2.5}),
    *_at(SERVICE_VS_CARD, "service / model card, {workload}, c={c}", {("rag", 1): 1.5}),
    Target(
        "service p50 / model card p50, short, c=1", SERVICE_VS_CARD_P50, "short", 1, maximum=0.5
    ),
    *_at(
        REUSE_ON_OFF,
        "engine reuse on/off, {workload}, c={c}",
        {("short", 64): 1.5, ("rag", 64): 1.15},
    ),
)


def check_names(
    figures: Iterable[Figure], targets: Iterable[Target], contenders: Iterable[str]
) -> None:
    """Raise ``LookupError`` for a figure comparing a contender not in ``contenders``, a target
    on a figure not printed, or on a workload the bench does not run."""
    known = set(contenders)
    figures = tuple(figures)
    for figure in figures:
        missing = [name for name in figure.contenders if name not in known]
        if missing:
            raise LookupError(
                f"the figure {figure.label!r} compares {', '.join(map(repr, missing))}, which "
                "the contender registry does not build"
            )
    for target in targets:
        if target.figure not in figures:
            raise LookupError(f"the target {target.title!r} is on a figure that is not printed")
        if target.workload not in WORKLOADS:
            raise LookupError(f"the target {target.title!r} is on an unknown workload")


check_names(FIGURES, TARGETS, CONTENDERS)


def ratios(cells: Sequence[MeasuredCell], figures: Sequence[Figure] = FIGURES) -> dict[str, Any]:
    """Each figure whose contenders all have a cell at the workload and concurrency. A
    contender measured without concurrency (the reference) counts at every concurrency."""
    by_key = {(c.workload, c.concurrency, c.key): c for c in cells}
    found: dict[str, Any] = {}
    for workload in sorted({c.workload for c in cells}):
        for concurrency in sorted({c.concurrency for c in cells}):
            for figure in figures:
                if figure.only_at is not None and concurrency != figure.only_at:
                    continue
                compared = [
                    by_key.get((workload, concurrency, name)) or by_key.get((workload, 0, name))
                    for name in figure.contenders
                ]
                if all(cell is not None for cell in compared):
                    found[figure.key(workload, concurrency)] = figure.value(*compared)
    return found


def judge(ratios: Mapping[str, Any], targets: Sequence[Target] = TARGETS) -> list[str]:
    """Each target the ratios hold a value for, met or missed."""
    return [line for target in targets if (line := target.judged(ratios)) is not None]

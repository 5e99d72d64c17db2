"""What an eval found, as a terminal table, JSON, or a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker_service.offline.ranking_metrics import Drift, Quality


@dataclass(frozen=True)
class ConfigResult:
    """One configuration's run, measured."""

    name: str
    options: dict[str, Any]
    quality: Quality
    drift: Drift | None
    """Against the first configuration; None for the first itself."""
    seconds: float
    pairs: int

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class FirstStage:
    """The candidates every configuration reranks, measured as they came."""

    source: str
    """``bm25``, or the run file's path."""
    top_k: int
    quality: Quality
    recall_at_top_k: float
    """The most any reranker can reach: relevant documents among the candidates."""


@dataclass(frozen=True)
class EvalReport:
    dataset: str
    split: str
    queries: int
    first_stage: FirstStage
    results: Sequence[ConfigResult]

    def as_json(self) -> dict[str, Any]:
        k = self.first_stage.quality.k
        return {
            "dataset": self.dataset,
            "split": self.split,
            "queries": self.queries,
            "first_stage": {
                "source": self.first_stage.source,
                "top_k": self.first_stage.top_k,
                **_quality_json(self.first_stage.quality),
                f"recall@{self.first_stage.top_k}": self.first_stage.recall_at_top_k,
            },
            "configurations": [
                {
                    "name": result.name,
                    "options": result.options,
                    **_quality_json(result.quality),
                    "drift": None if result.drift is None else _drift_json(result.drift),
                    "seconds": round(result.seconds, 3),
                    "pairs": result.pairs,
                    "pairs_per_second": round(result.pairs_per_second, 1),
                }
                for result in self.results
            ],
            "recall_depth": k,
        }


def _quality_json(quality: Quality) -> dict[str, float]:
    return {
        "ndcg@10": quality.ndcg_at_10,
        "mrr@10": quality.mrr_at_10,
        f"recall@{quality.k}": quality.recall_at_k,
    }


def _drift_json(drift: Drift) -> dict[str, float | int]:
    return {
        "top10_overlap": drift.top10_overlap,
        "kendall_tau": drift.kendall_tau,
        "max_score_difference": drift.max_score_difference,
        "queries": drift.queries,
    }


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first, *rest = cells
    return "  ".join(
        [first.ljust(widths[0])]
        + [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
    )


def table(report: EvalReport) -> str:
    """The table a person reads: quality per configuration, then how far each moved from the
    first (overlap and tau of 1 and a difference of 0: no drift)."""
    stage = report.first_stage
    k = stage.quality.k
    header = [
        "configuration",
        "nDCG@10",
        "MRR@10",
        f"R@{k}",
        "top-10 overlap",
        "Kendall tau",
        "max |Δscore|",
        "pairs/s",
    ]
    rows = [
        [
            f"first stage ({stage.source})",
            *_quality_cells(stage.quality),
            "",
            "",
            "",
            "",
        ]
    ]
    for result in report.results:
        drift = result.drift
        rows.append(
            [
                result.name,
                *_quality_cells(result.quality),
                "-" if drift is None else f"{drift.top10_overlap:.3f}",
                "-" if drift is None else f"{drift.kendall_tau:.3f}",
                "-" if drift is None else f"{drift.max_score_difference:.2e}",
                f"{result.pairs_per_second:,.1f}",
            ]
        )
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [
        f"{report.dataset} ({report.split}): {report.queries} queries, {stage.top_k} candidates "
        f"each from {stage.source} (recall@{stage.top_k} {stage.recall_at_top_k:.3f}: the "
        "ceiling of any reranker)",
        _row(header, widths),
        *(_row(row, widths) for row in rows),
    ]
    if len(report.results) > 1:
        lines.append(f"drift columns: each configuration against {report.results[0].name!r}")
    return "\n".join(lines)


def _quality_cells(quality: Quality) -> list[str]:
    return [f"{quality.ndcg_at_10:.4f}", f"{quality.mrr_at_10:.4f}", f"{quality.recall_at_k:.4f}"]


def plot(report: EvalReport, path: Path) -> None:
    """Two panels: each configuration's quality beside the first stage's, and its drift from
    the first configuration."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    names = [f"first stage ({report.first_stage.source})"] + [r.name for r in report.results]
    qualities = [report.first_stage.quality] + [r.quality for r in report.results]
    k = report.first_stage.quality.k
    measures = {
        "nDCG@10": [q.ndcg_at_10 for q in qualities],
        "MRR@10": [q.mrr_at_10 for q in qualities],
        f"R@{k}": [q.recall_at_k for q in qualities],
    }
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(measures)
    for offset, (label, values) in enumerate(measures.items()):
        left.bar([i + offset * width for i in range(len(names))], values, width, label=label)
    left.set_xticks([i + width * (len(measures) - 1) / 2 for i in range(len(names))], names)
    left.tick_params(axis="x", labelrotation=20)
    left.set_ylim(0, 1)
    left.set_title(f"{report.dataset}: ranking quality ({report.queries} queries)")
    left.legend()
    compared = [r for r in report.results if r.drift is not None]
    if compared:
        drift_names = [r.name for r in compared]
        overlap = [r.drift.top10_overlap for r in compared if r.drift is not None]
        tau = [r.drift.kendall_tau for r in compared if r.drift is not None]
        positions = range(len(drift_names))
        right.bar([p - 0.2 for p in positions], overlap, 0.4, label="top-10 overlap")
        right.bar([p + 0.2 for p in positions], tau, 0.4, label="Kendall tau")
        right.set_xticks(list(positions), drift_names)
        right.set_ylim(-1, 1)
        right.legend()
    right.set_title(f"drift against {report.results[0].name!r} (1 = none)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

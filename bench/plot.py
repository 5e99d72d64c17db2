"""The benchmark's throughput as a picture: pairs/s against concurrency, one line per
contender, one panel per workload (matplotlib, written as a PNG).

    python bench/plot.py bench/results/run.json throughput.png    # a run saved with --json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol


class _Cell(Protocol):
    workload: str
    concurrency: int
    contender: str
    pairs_per_second: float


def plot_throughput(cells: list[Any], path: Path, title: str) -> None:
    """One panel per workload; a contender measured without concurrency (the best fixed
    budget) is a dashed level line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    typed: list[_Cell] = cells
    workloads = sorted({cell.workload for cell in typed})
    figure, axes = plt.subplots(
        1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False, constrained_layout=True
    )
    for axis, workload in zip(axes[0], workloads, strict=True):
        lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
        levels: dict[str, float] = {}
        for cell in typed:
            if cell.workload != workload:
                continue
            if cell.concurrency:
                lines[cell.contender].append((cell.concurrency, cell.pairs_per_second))
            else:
                levels[cell.contender] = cell.pairs_per_second
        for contender, points in sorted(lines.items()):
            points.sort()
            axis.plot(*zip(*points, strict=True), marker="o", label=contender)
        for contender, level in levels.items():
            axis.axhline(level, linestyle="--", color="grey", label=contender)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("pairs/s")
        axis.set_title(workload)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description="Plot a run saved by rerank_bench.py --json.")
    parser.add_argument("run", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--title", help="default: the run's model and machine")
    args = parser.parse_args()
    run = json.loads(args.run.read_text())
    cells = [SimpleNamespace(**cell) for cell in run["cells"]]
    title = args.title or f"{run['model']} on {run['machine']}"
    plot_throughput(cells, args.png, title)


if __name__ == "__main__":
    main()

"""Two source trees on the same benchmark, rounds interleaved: did a change move the numbers?

    python bench/compare_trees.py --base ../main-before --model ./mid-model --rounds 6 -- \\
        --contenders engine engine-no-reuse --workloads short rag --concurrency 1 16 --seconds 4

Each round runs ``bench/rerank_bench.py`` once from the base tree and once from this one (the
order alternating between rounds, so drift of the machine hits both alike), each with its own
``src/`` and ``bench/`` first on ``PYTHONPATH``, and every argument after ``--``. Prints, per
cell, the mean pairs/s and p50 of each tree and their ratio (this tree over the base), and
writes every run's JSON beside ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _run(tree: Path, arguments: list[str], out: Path) -> list[dict[str, object]]:
    environment = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{tree / 'bench'}")
    command = [sys.executable, str(tree / "bench" / "rerank_bench.py"), *arguments]
    subprocess.run([*command, "--json", str(out)], env=environment, check=True, cwd=tree)
    cells: list[dict[str, object]] = json.loads(out.read_text())["cells"]
    return cells


def _key(cell: dict[str, object]) -> tuple[str, str, str]:
    return str(cell["workload"]), str(cell["concurrency"]), str(cell["contender"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, required=True, help="the other checkout")
    parser.add_argument("--model", default="test", help="passed on as --model")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("compare-trees"))
    parser.add_argument("bench_arguments", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    forwarded = [a for a in args.bench_arguments if a != "--"]
    if args.model != "test":
        forwarded = ["--model", str(Path(args.model).resolve()), *forwarded]
    args.out.mkdir(parents=True, exist_ok=True)
    trees = {"base": args.base.resolve(), "this": HERE}
    runs: dict[str, list[list[dict[str, object]]]] = {"base": [], "this": []}
    for round_index in range(args.rounds):
        order = ["base", "this"] if round_index % 2 == 0 else ["this", "base"]
        for name in order:
            out = (args.out / f"{name}-{round_index}.json").resolve()
            runs[name].append(_run(trees[name], forwarded, out))

    def mean_of(name: str, key: tuple[str, str, str], field: str) -> float:
        values = [
            float(str(cell[field]))
            for cells in runs[name]
            for cell in cells
            if _key(cell) == key and cell.get(field) is not None
        ]
        return statistics.fmean(values) if values else 0.0

    keys = list(dict.fromkeys(_key(cell) for cells in runs["this"] for cell in cells))
    print(f"\n{args.rounds} rounds, interleaved; this tree over the base")
    print(
        "| workload | conc. | contender | base pairs/s | this pairs/s | ratio | base p50 ms "
        "| this p50 ms | ratio |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for key in keys:
        if not all(any(_key(c) == key for c in cells) for cells in runs["base"]):
            continue
        rates = [mean_of(name, key, "pairs_per_second") for name in ("base", "this")]
        if not rates[0]:
            continue
        p50s = [mean_of(name, key, "p50_ms") for name in ("base", "this")]
        p50_ratio = f"{p50s[1] / p50s[0]:.2f}" if p50s[0] else "–"
        print(
            f"| {' | '.join(key)} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[1] / rates[0]:.2f} "
            f"| {p50s[0]:.1f} | {p50s[1]:.1f} | {p50_ratio} |"
        )


if __name__ == "__main__":
    main()

"""``bench/gpu_check.py`` on the CPU, as CI runs it: every step a CPU can run reports its
figures, the GPU-only ones say so, and a budget that runs out still leaves a report of what was
reached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT


def _check(out: Path, budget_seconds: int) -> dict[str, Any]:
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "gpu_check.py")),
            *("--device", "cpu", "--out", str(out), "--budget-seconds", str(budget_seconds)),
        ],
        capture_output=True,
        text=True,
        timeout=budget_seconds + 120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "gpu-check.md").read_text().startswith("# GPU check")
    report: dict[str, Any] = json.loads((out / "gpu-check.json").read_text())
    return report


@pytest.mark.slow
def test_the_check_runs_what_a_cpu_can_and_says_what_it_cannot(tmp_path: Path) -> None:
    report = _check(tmp_path, budget_seconds=420)
    steps = report["steps"]
    cold = steps["Compile, cold cache"]
    assert set(cold["bucket_compile_seconds"]) == {"128"}
    assert cold["cache_misses"] > 0
    warm = steps["Compile, warm cache (a new process)"]
    assert warm["cache_hits"] > 0  # read from the cold start's folder, in a new process
    assert warm["cache_misses"] < cold["cache_misses"]
    assert steps["Self-check"]["max_difference"] <= 1e-4
    assert steps["Recompiles after prepare"]["ok"] is True
    scores = steps["Scores against the model card"]["runners"]
    assert set(scores) == {"float32 padded", "float32 packed, eager", "float32 packed, compiled"}
    assert all(score["max_difference"] <= 1e-4 for score in scores.values())
    assert sorted(report["not_reached"]) == [
        "Bench cells: needs CUDA",
        "Graph replays against eager passes: needs CUDA (no graphs on a CPU)",
        "Synchronisation in a graphed pass's launch: needs CUDA",
    ]


def test_a_spent_budget_leaves_a_report_of_what_was_reached(tmp_path: Path) -> None:
    report = _check(tmp_path, budget_seconds=8)
    assert "Machine" in report["steps"]
    assert any(item.endswith("stopped at the budget") for item in report["not_reached"])
    assert "Bench cells: not reached" in report["not_reached"]

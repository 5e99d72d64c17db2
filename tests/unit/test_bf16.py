"""bf16 against fp32, and a bf16 score across batch compositions: the bounds the docs state."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from tests.support.paths import ROOT
from tests.support.script_modules import load_bench_module


def load_drift_bench() -> ModuleType:
    """``bench/bf16_drift.py``, which imports its sibling scripts by name."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return load_bench_module("bf16_drift")


def test_bf16_scores_stay_within_the_stated_bounds(checkpoint: Path) -> None:
    drift = load_drift_bench()
    result = drift.measure(str(checkpoint), "cpu", 8192)
    # fp32: a score does not depend on its batch (the contract's 1e-4, met with room).
    assert max(result["float32_batch_drift_max"].values()) <= 1e-5
    assert 0 < result["bf16_vs_fp32_max"] <= drift.BF16_VS_FP32_BOUND
    assert 0 < max(result["bfloat16_batch_drift_max"].values()) <= drift.BF16_BATCH_DRIFT_BOUND

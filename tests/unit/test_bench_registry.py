"""The benchmark's contender registry: ``--contenders`` offers exactly its keys, the ratio targets
name only contenders it builds (a target on one it lacks fails on import, not in silence), a
contender named on the command line that cannot run here stops the bench before it measures,
the figures and targets print as they always have, and its factories build contenders that
score."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from reranker_service.engine.runner.names import RUNNER_NAMES
from tests.support.paths import ROOT


@pytest.fixture(scope="module")
def bench() -> Iterator[SimpleNamespace]:
    """The bench's modules, imported as its scripts import each other (``bench/`` on the path)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "bench"))
        modules = {
            name: importlib.import_module(name)
            for name in ("contender_registry", "targets", "rerank_bench", "workloads")
        }
        yield SimpleNamespace(**modules)


def _registry(bench: SimpleNamespace) -> ModuleType:
    registry: ModuleType = bench.contender_registry
    return registry


def test_the_command_line_offers_exactly_the_registry(bench: SimpleNamespace) -> None:
    registry = _registry(bench)
    parser = bench.rerank_bench.build_parser()
    flags = {action.dest: action for action in parser._actions}
    assert flags["contenders"].choices == list(registry.CONTENDERS)
    assert flags["runner"].choices == ["auto", *RUNNER_NAMES]
    assert set(registry.DEFAULT_CONTENDERS) <= set(registry.CONTENDERS)
    # One engine contender per runner the service registers, and the compiled one.
    for runner in RUNNER_NAMES:
        assert f"engine-{runner}" in registry.CONTENDERS
    assert {"card", "crossencoder", "openvino", "engine", "engine-no-reuse"} <= set(
        registry.CONTENDERS
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--contenders", "engine-sparse"])


def test_every_target_names_a_registered_contender_and_a_known_workload(
    bench: SimpleNamespace,
) -> None:
    targets = bench.targets
    compared = {name for figure in targets.FIGURES for name in figure.contenders}
    assert compared <= set(_registry(bench).CONTENDERS)
    assert {target.workload for target in targets.TARGETS} <= set(bench.workloads.WORKLOADS)
    # What the import-time check does with a registry that lacks a contender a target names:
    without_openvino = [name for name in _registry(bench).CONTENDERS if name != "openvino"]
    with pytest.raises(LookupError, match="'service/openvino pairs/s' compares 'openvino'"):
        targets.check_names(targets.FIGURES, targets.TARGETS, without_openvino)
    stray = targets.Target("somewhere", targets.REUSE_ON_OFF, "tiny", 1, minimum=1.0)
    with pytest.raises(LookupError, match="unknown workload"):
        targets.check_names(targets.FIGURES, [stray], _registry(bench).CONTENDERS)


def test_a_contender_named_that_cannot_run_here_stops_the_bench(
    bench: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = _registry(bench)
    with pytest.raises(registry.ContenderUnavailableError, match="openvino cannot run here"):
        registry.select(["engine", "openvino"], "cuda")
    with pytest.raises(LookupError, match="'engine-sparse'"):
        registry.select(["engine-sparse"], "cpu")
    # Named on the command line: the bench exits before it builds a checkpoint.
    monkeypatch.setattr(
        sys, "argv", ["rerank_bench.py", "--contenders", "openvino", "--device", "cuda"]
    )
    with pytest.raises(SystemExit) as exited:
        bench.rerank_bench.main()
    assert exited.value.code == 2
    assert "--contenders openvino cannot run here: it is the CPU peer" in capsys.readouterr().err


def test_a_default_contender_whose_library_is_missing_is_left_out_and_said_so(
    bench: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry(bench)
    real_find_spec = registry.importlib.util.find_spec

    def without_sentence_transformers(name: str, *args: Any) -> Any:
        return None if name == "sentence_transformers" else real_find_spec(name, *args)

    monkeypatch.setattr(registry.importlib.util, "find_spec", without_sentence_transformers)
    chosen = registry.select(None, "cpu")
    assert "crossencoder" not in chosen.names
    assert chosen.names == tuple(n for n in registry.DEFAULT_CONTENDERS if n != "crossencoder")
    assert chosen.skipped == (
        "  crossencoder skipped: sentence_transformers is not installed "
        "(the bench extras: pip install -e '.[bench]')",
    )
    with pytest.raises(registry.ContenderUnavailableError, match="sentence_transformers"):
        registry.select(["crossencoder"], "cpu")


def _cell(bench: SimpleNamespace, key: str, name: str, concurrency: int, **figures: Any) -> Any:
    values: dict[str, Any] = {
        "requests": 1,
        "pairs": 1,
        "seconds": 1.0,
        "pairs_per_second": 100.0,
        "tokens_per_second": 1.0,
        "p50_ms": 10.0,
        "p95_ms": 1.0,
        "p99_ms": 1.0,
        "padding_efficiency": None,
        "pairs_per_pass": None,
        "peak_memory_mb": None,
        "mfu": None,
        "http_overhead_p50_ms": None,
    }
    values.update(figures)
    return bench.rerank_bench.Cell(
        key=key, workload="short", concurrency=concurrency, contender=name, **values
    )


def test_the_figures_and_targets_print_as_before(bench: SimpleNamespace) -> None:
    """Keys, order and lines as docs/benchmark.md and bench/gpu_check.py read them; the
    reference, measured without concurrency, compared at every concurrency."""
    cells = [
        _cell(bench, "reference", "best fixed budget (1024)", 0, pairs_per_second=100.0),
        _cell(bench, "card", "model card", 1, pairs_per_second=50.0, p50_ms=40.0),
        _cell(bench, "engine", "engine", 1, pairs_per_second=120.0, p50_ms=8.0),
        _cell(bench, "service", "service", 1, p50_ms=10.0, http_overhead_p50_ms=1.5),
        _cell(bench, "engine", "engine", 16, pairs_per_second=170.0),
        _cell(bench, "engine-no-reuse", "engine, reuse off", 16, pairs_per_second=100.0),
        _cell(bench, "engine-workers", "engine, 2 workers", 16, pairs_per_second=340.0),
        _cell(bench, "service", "service", 16, pairs_per_second=120.0),
    ]
    figures = bench.targets.ratios(cells)
    assert list(figures.items()) == [
        ("service/best fixed budget pairs/s short c=1", 1.0),
        ("engine/best fixed budget pairs/s short c=1", 1.2),
        ("engine/card pairs/s short c=1", 2.4),
        ("service/card pairs/s short c=1", 2.0),
        ("service/engine pairs/s short c=1", 0.83),
        ("service/card p50 short c=1", 0.25),
        ("service-engine p50 ms short c=1", 2.0),
        ("service HTTP overhead p50 ms short c=1", 1.5),
        ("service/best fixed budget pairs/s short c=16", 1.2),
        ("engine/best fixed budget pairs/s short c=16", 1.7),
        ("engine reuse off/best fixed budget pairs/s short c=16", 1.0),
        ("reuse on/off pairs/s short c=16", 1.7),
        ("service/engine pairs/s short c=16", 0.71),
        ("workers/engine pairs/s short c=16", 2.0),
    ]
    assert bench.targets.judge(figures) == [
        "- met: engine reuse on/off, short, c=16 = 1.7 (target >= 1.6)",
        "- MISSED: service c=16 / best fixed budget, short = 1.2 (target >= 1.4)",
        "- met: HTTP overhead p50 ms, short, c=1 = 1.5 (target < 2.5)",
        "- met: service p50 / model card p50, short, c=1 = 0.25 (target < 0.5)",
    ]


def test_every_target_keeps_its_title_bound_and_order(bench: SimpleNamespace) -> None:
    """The issues' targets as the bench printed them before the registry (each at 1.0)."""
    targets = bench.targets
    at_one = {t.figure.key(t.workload, t.concurrency): 1.0 for t in targets.TARGETS}
    assert targets.judge(at_one) == [
        "- MISSED: engine reuse on/off, short, c=16 = 1.0 (target >= 1.6)",
        "- MISSED: engine reuse on/off, rag, c=16 = 1.0 (target >= 1.15)",
        "- met: engine reuse on/off, long, c=16 = 1.0 (target >= 0.97)",
        "- MISSED: service c=16 / best fixed budget, short = 1.0 (target >= 1.4)",
        "- MISSED: service c=16 / best fixed budget, rag = 1.0 (target >= 1.05)",
        "- met: service c=16 / best fixed budget, long = 1.0 (target >= 0.9)",
        "- met: HTTP overhead p50 ms, short, c=1 = 1.0 (target < 2.5)",
        "- met: HTTP overhead p50 ms, rag, c=1 = 1.0 (target < 2.5)",
        "- met: HTTP overhead p50 ms, long, c=1 = 1.0 (target < 2.5)",
        "- MISSED: service c=8 / best fixed budget, short = 1.0 (target >= 1.2)",
        "- MISSED: service c=8 / best fixed budget, rag = 1.0 (target >= 1.2)",
        "- MISSED: service / openvino, short, c=8 = 1.0 (target >= 2.0)",
        "- MISSED: service / openvino, short, c=1 = 1.0 (target >= 1.5)",
        "- MISSED: service / openvino, rag, c=8 = 1.0 (target >= 2.0)",
        "- MISSED: service / openvino, rag, c=1 = 1.0 (target >= 1.5)",
        "- MISSED: service / openvino, long, c=8 = 1.0 (target >= 2.0)",
        "- MISSED: service / openvino, long, c=1 = 1.0 (target >= 1.5)",
        "- MISSED: service / crossencoder, rag, c=64 = 1.0 (target >= 2.5)",
        "- MISSED: service / model card, rag, c=1 = 1.0 (target >= 1.5)",
        "- MISSED: service p50 / model card p50, short, c=1 = 1.0 (target < 0.5)",
        "- MISSED: engine reuse on/off, short, c=64 = 1.0 (target >= 1.5)",
        "- MISSED: engine reuse on/off, rag, c=64 = 1.0 (target >= 1.15)",
    ]


def test_a_target_on_a_contender_the_registry_lacks_stops_the_import() -> None:
    code = (
        "import sys, types; sys.path.insert(0, 'bench'); import contender_registry as r; "
        "r.CONTENDERS = types.MappingProxyType("
        "{k: v for k, v in r.CONTENDERS.items() if k != 'engine-no-reuse'}); import targets"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "LookupError: the figure 'engine reuse off/best fixed budget pairs/s' compares" in (
        done.stderr
    )


async def test_the_registry_builds_contenders_that_score(
    bench: SimpleNamespace, checkpoint: Path, tmp_path: Path
) -> None:
    """The model card and the engine on each registered runner, as ``--contenders`` builds
    them."""
    registry = _registry(bench)
    names = ["card", *(f"engine-{runner}" for runner in RUNNER_NAMES)]
    options = registry.BenchOptions(device="cpu", dtype="float32", max_length=512)
    run = registry.BenchRun(options, str(checkpoint), tmp_path)
    request = bench.workloads.Request("What is the capital of France?", ["Paris.", "Berlin."])
    try:
        built = await registry.build_contenders(names, run)
        assert list(built) == names
        assert [contender.name for contender in built.values()] == [
            "model card",
            *(f"engine, {runner}" for runner in RUNNER_NAMES),
        ]
        for contender in built.values():
            assert await contender.rerank(request) > 0
    finally:
        await run.stop()


def test_a_slow_models_pairs_per_second_keeps_its_precision(bench: SimpleNamespace) -> None:
    """A 0.6B model on a CPU runs about one pair a second: a cell rounded to one decimal would
    put 1.013 against 0.915 as 1.0 against 0.9: a ratio of 1.11 where the two make 1.10."""
    significant = bench.targets.significant
    assert (significant(1.0134), significant(0.9149)) == (1.01, 0.915)
    assert significant(912.49) == 912.0
    ratio = bench.targets.SERVICE_VS_REFERENCE.value
    cells = [SimpleNamespace(pairs_per_second=significant(x)) for x in (1.0134, 0.9149)]
    assert ratio(*cells) == 1.1

"""``reranker-service eval`` as users run it, on the synthetic BEIR set in tests/data/: its
measures checked against ir_measures called directly on the runs it saved."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ir_measures
import pytest
from ir_measures import RR, R, nDCG

from reranker_service.app import create_app
from reranker_service.offline.beir import read_trec_run
from tests.support.local_server import serve_in_thread
from tests.support.serving import make_settings

pytestmark = pytest.mark.slow  # real processes, each loading the model

DATASET = Path(__file__).parents[1] / "data" / "beir-synthetic"
QRELS = DATASET / "qrels" / "test.tsv"


def _eval(*arguments: str | Path) -> list[str]:
    return [sys.executable, "-m", "reranker_service", "eval", str(DATASET), *map(str, arguments)]


def _measured(run_file: Path, recall_at: int) -> dict[str, float]:
    """What ir_measures says of a run file, over the qrels' queries."""
    rows = [line.split("\t") for line in QRELS.read_text().splitlines()[1:]]  # BEIR's TSV
    qrels: dict[str, dict[str, int]] = {}
    for query, doc, grade in rows:
        qrels.setdefault(query, {})[doc] = int(grade)
    run = list(ir_measures.read_trec_run(str(run_file)))
    measured = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ recall_at], qrels, run)
    return {
        "ndcg@10": measured[nDCG @ 10],
        "mrr@10": measured[RR @ 10],
        f"recall@{recall_at}": measured[R @ recall_at],
    }


def _top10(run_file: Path) -> dict[str, list[str]]:
    return read_trec_run(run_file, 10)


async def test_two_configurations_in_process_measured_as_ir_measures_measures_their_runs(
    checkpoint: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    picture = tmp_path / "eval.png"
    completed = await asyncio.to_thread(
        subprocess.run,
        _eval(
            "--top-k",
            "20",
            "--recall-at",
            "5",
            "--config",
            "full",
            "--config",
            "cut:max_tokens_per_doc=6",
            "--json",
            "--save-runs",
            runs,
            "--plot",
            picture,
            "--model",
            checkpoint,
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode == 0, completed.stderr
    report: dict[str, Any] = json.loads(completed.stdout)  # stdout holds the JSON alone
    assert report["queries"] == 30
    assert report["first_stage"]["source"] == "bm25"
    full, cut = report["configurations"]
    assert [full["name"], cut["name"]] == ["full", "cut"]
    assert cut["options"] == {"max_tokens_per_doc": 6}
    for result in (full, cut):
        measured = _measured(runs / f"{result['name']}.trec", recall_at=5)
        for measure, value in measured.items():
            assert result[measure] == pytest.approx(value, abs=1e-9), (result["name"], measure)
        assert result["pairs"] == 30 * 20
    # The drift, from the saved runs: top-10 overlap and the largest score difference.
    full_top, cut_top = _top10(runs / "full.trec"), _top10(runs / "cut.trec")
    overlap = sum(len(set(full_top[q]) & set(cut_top[q])) / 10 for q in full_top) / len(full_top)
    assert cut["drift"]["top10_overlap"] == pytest.approx(overlap)
    assert cut["drift"]["queries"] == 30
    assert 0 < cut["drift"]["max_score_difference"] <= 1
    assert full["drift"] is None
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_file_reranked_by_a_running_service_prints_the_table(
    checkpoint: Path, tmp_path: Path
) -> None:
    candidates = DATASET / "candidates.trec"
    app = create_app(make_settings(checkpoint))
    with serve_in_thread(app) as base_url:
        completed = subprocess.run(
            _eval("--run", candidates, "--top-k", "10", "--url", base_url, "--config", "served"),
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("beir-synthetic (test): 30 queries, 10 candidates each from")
    header, first_stage, served = lines[1:4]
    assert header.split()[:4] == ["configuration", "nDCG@10", "MRR@10", "R@10"]
    # The first stage's row is the run file cut to its top 10, as ir_measures measures it.
    cut = tmp_path / "top10.trec"
    cut.write_text(
        "".join(
            f"{query} Q0 {doc} {rank} {10 - rank} cut\n"
            for query, docs in read_trec_run(candidates, 10).items()
            for rank, doc in enumerate(docs)
        )
    )
    measured = _measured(cut, recall_at=10)
    assert first_stage.split()[-3:] == [
        f"{measured['ndcg@10']:.4f}",
        f"{measured['mrr@10']:.4f}",
        f"{measured['recall@10']:.4f}",
    ]
    assert served.split()[0] == "served"


def test_an_unknown_configuration_key_is_refused_before_any_model_loads() -> None:
    completed = subprocess.run(
        _eval("--config", "odd:temperature=2"), capture_output=True, text=True, timeout=120
    )

    assert completed.returncode == 2
    assert "configuration 'odd': unknown keys ['temperature']" in completed.stderr

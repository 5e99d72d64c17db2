"""Quality is ir_measures' nDCG@10, MRR@10 and Recall@k averaged over every judged query (a
query the run misses counts 0); drift compares two configurations' scores and top 10s."""

from __future__ import annotations

import math

import ir_measures
import pytest
from ir_measures import RR, R, nDCG

from reranker_service.offline.beir import load_beir, read_trec_run
from reranker_service.offline.ranking_metrics import Drift, drift, quality
from tests.support.paths import DATA

SYNTHETIC = DATA / "beir-synthetic"


def _ranked(documents: list[str]) -> dict[str, float]:
    """Documents best first, as scores."""
    return {document_id: float(len(documents) - rank) for rank, document_id in enumerate(documents)}


@pytest.fixture(scope="module")
def synthetic_run() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    dataset = load_beir(SYNTHETIC)
    qrels = {query_id: dict(dataset.qrels[query_id]) for query_id in dataset.evaluated_query_ids}
    candidates = read_trec_run(SYNTHETIC / "candidates.trec", top_k=20)
    return qrels, {query_id: _ranked(documents) for query_id, documents in candidates.items()}


def test_quality_is_ir_measures_when_the_run_covers_every_query(
    synthetic_run: tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]],
) -> None:
    qrels, run = synthetic_run
    assert set(run) == set(qrels)
    expected = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ 20], qrels, run)
    measured = quality(qrels, run, recall_depth=20)
    assert (measured.k, measured.queries) == (20, 30)
    assert (measured.ndcg_at_10, measured.mrr_at_10, measured.recall_at_k) == pytest.approx(
        (expected[nDCG @ 10], expected[RR @ 10], expected[R @ 20]), abs=1e-12
    )
    # The first stage is imperfect on purpose: room for a reranker.
    assert 0.3 < measured.ndcg_at_10 < 0.9


def test_a_query_missing_from_the_run_lowers_each_mean_by_its_share(
    synthetic_run: tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]],
) -> None:
    qrels, run = synthetic_run
    full = quality(qrels, run, recall_depth=5)
    left_out = "q07"
    own = {
        metric.measure: metric.value
        for metric in ir_measures.iter_calc(
            [nDCG @ 10, RR @ 10, R @ 5], {left_out: qrels[left_out]}, {left_out: run[left_out]}
        )
    }
    assert min(own.values()) > 0  # else leaving it out would change nothing
    partial = quality(qrels, {q: docs for q, docs in run.items() if q != left_out}, 5)
    assert partial.queries == 30
    assert partial.ndcg_at_10 == pytest.approx(full.ndcg_at_10 - own[nDCG @ 10] / 30)
    assert partial.mrr_at_10 == pytest.approx(full.mrr_at_10 - own[RR @ 10] / 30)
    assert partial.recall_at_k == pytest.approx(full.recall_at_k - own[R @ 5] / 30)


def test_a_missing_or_empty_query_counts_zero_and_unjudged_ones_nothing() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    run = {"q1": {"d1": 1.0}, "q3": {}, "unjudged": {"d9": 1.0}}
    measured = quality(qrels, run, recall_depth=10)
    assert (measured.k, measured.queries) == (10, 3)
    assert (measured.ndcg_at_10, measured.mrr_at_10, measured.recall_at_k) == pytest.approx(
        (1 / 3, 1 / 3, 1 / 3)
    )


def test_a_hand_computed_ranking() -> None:
    # Ranked: n0 (grade 0), g2 (grade 2), x (unjudged), g1 (grade 1); grade 0 is not relevant.
    qrels = {"q": {"n0": 0, "g2": 2, "g1": 1}}
    run = {"q": _ranked(["n0", "g2", "x", "g1"])}
    # Gains are the grades (trec_eval's nDCG): rank 2 and rank 4, against the ideal g2, g1.
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    measured = quality(qrels, run, recall_depth=3)
    assert measured.mrr_at_10 == pytest.approx(0.5)
    assert measured.ndcg_at_10 == pytest.approx(dcg / ideal)
    assert measured.recall_at_k == pytest.approx(0.5)  # g2 within the top 3, g1 not
    assert quality(qrels, run, recall_depth=4).recall_at_k == pytest.approx(1.0)


def test_mrr_stops_at_ten() -> None:
    documents = [f"n{rank}" for rank in range(10)] + ["hit"]
    assert quality({"q": {"hit": 1}}, {"q": _ranked(documents)}, 20).mrr_at_10 == 0.0
    assert quality({"q": {"hit": 1}}, {"q": _ranked(documents[1:])}, 20).mrr_at_10 == 0.1


def test_quality_refuses_what_it_cannot_measure() -> None:
    with pytest.raises(ValueError, match="recall_depth"):
        quality({"q": {"d": 1}}, {}, recall_depth=0)
    with pytest.raises(ValueError, match="judge no query"):
        quality({}, {"q": {"d": 1.0}}, recall_depth=10)


def test_identical_runs_do_not_drift() -> None:
    run = {
        "q1": {f"d{index}": index / 7 for index in range(15)},
        "q2": {"a": 0.5, "b": -1.0, "c": 2.0},
    }
    assert drift(run, {query_id: dict(scores) for query_id, scores in run.items()}) == Drift(
        top10_overlap=1.0, kendall_tau=1.0, max_score_difference=0.0, queries=2
    )


def test_a_reversed_run_has_tau_minus_one_and_the_overlap_of_its_top_tens() -> None:
    twenty = [f"d{index}" for index in range(20)]
    twelve = twenty[:12]
    reference = {"q1": _ranked(twenty), "q2": _ranked(twelve)}
    reversed_run = {"q1": _ranked(twenty[::-1]), "q2": _ranked(twelve[::-1])}
    measured = drift(reference, reversed_run)
    # q1: d0..d9 against d10..d19, nothing shared; q2: d0..d9 against d2..d11, 8 of 10.
    assert measured.top10_overlap == pytest.approx((0 / 10 + 8 / 10) / 2)
    assert measured.kendall_tau == pytest.approx(-1.0)
    assert measured.max_score_difference == pytest.approx(19.0)
    assert measured.queries == 2


def test_the_largest_score_difference_is_over_common_documents_only() -> None:
    reference = {"q1": {"a": 1.0, "b": 2.0, "only-here": 100.0}, "q2": {"c": 0.0}}
    other = {"q1": {"a": 1.25, "b": 2.0, "only-there": -100.0}, "q2": {"c": -0.75}}
    assert drift(reference, other).max_score_difference == pytest.approx(0.75)


def test_constant_scores_have_no_tau_and_are_left_out_of_its_mean() -> None:
    reference = {"ranked": _ranked(["a", "b", "c"]), "flat": {"a": 0.0, "b": 1.0, "c": 2.0}}
    other = {"ranked": _ranked(["b", "a", "c"]), "flat": {"a": 5.0, "b": 5.0, "c": 5.0}}
    measured = drift(reference, other)
    # Only "ranked" has a tau: one discordant pair of three.
    assert measured.kendall_tau == pytest.approx(1 / 3)
    assert measured.queries == 2
    assert math.isnan(drift({"flat": reference["flat"]}, {"flat": other["flat"]}).kendall_tau)


def test_only_queries_both_runs_rank_are_compared() -> None:
    reference = {"both": {"a": 1.0, "b": 0.0}, "reference-only": {"a": 1.0}, "empty": {}}
    other = {"both": {"a": 1.0, "b": 0.0}, "other-only": {"a": 3.0}, "empty": {"a": 1.0}}
    measured = drift(reference, other)
    assert measured.queries == 1
    assert measured.top10_overlap == 1.0
    nothing = drift(reference, {"other-only": {"a": 1.0}})
    assert nothing.queries == 0
    assert math.isnan(nothing.top10_overlap)
    assert nothing.max_score_difference == 0.0


def test_top_ten_ties_go_by_document_id() -> None:
    # Eleven documents tied: both runs' top 10 are d00..d09 whatever the mapping order.
    documents = [f"d{index:02d}" for index in range(11)]
    reference = {"q": dict.fromkeys(documents, 1.0)}
    other = {"q": dict.fromkeys(reversed(documents), 1.0)}
    assert drift(reference, other).top10_overlap == 1.0

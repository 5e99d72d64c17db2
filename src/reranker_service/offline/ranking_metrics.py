"""Ranking quality against a BEIR split's judgments, and drift between two configurations.

Quality is measured with ``ir_measures`` (trec_eval's definitions, through pytrec_eval, as BEIR
reports them): nDCG@10 with the judgments' grades as gains, MRR@10 and Recall@k with grade 1
and above relevant. Drift says how far another configuration (a dtype, a compiled runner, a
different batch policy) moves the scores and the top of the ranking away from the first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Final

import ir_measures
from ir_measures import RR, R, nDCG

Run = Mapping[str, Mapping[str, float]]
"""Query id → document id → score, higher is better."""
Qrels = Mapping[str, Mapping[str, int]]
"""Query id → document id → relevance grade."""

_TOP: Final = 10


@dataclass(frozen=True)
class Quality:
    """One configuration's ranking quality on one split."""

    ndcg_at_10: float
    mrr_at_10: float
    recall_at_k: float
    k: int
    queries: int
    """The queries averaged over: every query of the qrels."""


def quality(qrels: Qrels, run: Run, recall_depth: int) -> Quality:
    """nDCG@10, MRR@10 and Recall@``recall_depth`` of ``run``, each the mean over every query
    of ``qrels``; the caller passes only the queries it evaluates (those with a text, say).

    A query of ``qrels`` that the run leaves out (or ranks nothing for) counts 0, so that a
    configuration cannot score better by failing on some queries. ir_measures 0.4 averages so
    by itself (its evaluators fill in the measure's default, 0, for the queries the run lacks),
    but pytrec_eval used directly, as BEIR does, averages over the queries of the run only: the
    mean is taken here, over the queries named here, so that it does not hang on how a release
    of ir_measures aggregates. A judged query with no relevant document counts 0, as
    pytrec_eval scores it; queries of the run that ``qrels`` does not judge are not measured.
    """
    if recall_depth < 1:
        raise ValueError(f"recall_depth must be at least 1, not {recall_depth}")
    if not qrels:
        raise ValueError("the qrels judge no query: nothing to measure")
    judged = {query_id: dict(grades) for query_id, grades in qrels.items()}
    ndcg, mrr, recall = nDCG @ _TOP, RR @ _TOP, R @ recall_depth
    totals = _per_query_totals([ndcg, mrr, recall], judged, _measured_run(run, judged))
    return Quality(
        ndcg_at_10=totals[ndcg] / len(judged),
        mrr_at_10=totals[mrr] / len(judged),
        recall_at_k=totals[recall] / len(judged),
        k=recall_depth,
        queries=len(judged),
    )


def _measured_run(run: Run, judged: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The run's judged queries, with plain floats: pytrec_eval refuses numpy's scalars."""
    return {
        query_id: {document_id: float(score) for document_id, score in scores.items()}
        for query_id, scores in run.items()
        if query_id in judged and scores
    }


def _per_query_totals(
    measures: list[Any], judged: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
) -> dict[Any, float]:
    """Each measure summed over the queries of ``judged``; a query without a value adds 0."""
    totals: dict[Any, float] = dict.fromkeys(measures, 0.0)
    for metric in ir_measures.iter_calc(measures, judged, run):
        if metric.query_id in judged:
            totals[metric.measure] += float(metric.value)
    return totals


@dataclass(frozen=True)
class Drift:
    """How far one configuration's rankings are from the reference configuration's."""

    top10_overlap: float
    """Mean over the queries both runs rank of the share of the shorter top 10 that the other
    top 10 holds too; NaN when there is no such query."""
    kendall_tau: float
    """Mean over the queries with two or more documents in common of Kendall's tau-b between
    the two runs' scores on those documents; NaN when no query has a tau."""
    max_score_difference: float
    """The largest |reference − other| over every (query, document) both runs score."""
    queries: int
    """The queries both runs rank (at least one document each)."""


def drift(reference: Run, other: Run) -> Drift:
    """How far ``other`` moves from ``reference`` on the queries both rank.

    Tau is taken over the documents both score, as rerankings of the same candidates do. A
    query where either run gives every common document the same score has no tau (it is not
    a ranking), and is left out of the tau mean rather than counted as agreement or as its
    opposite; overlap and the score difference still count it. Top 10s break tied scores by
    document id, so that the figures depend on the scores alone.
    """
    common = sorted(
        query_id for query_id in reference if reference[query_id] and other.get(query_id)
    )
    overlaps = [_top_overlap(reference[query_id], other[query_id]) for query_id in common]
    taus = [
        tau
        for query_id in common
        if (tau := _kendall_tau(reference[query_id], other[query_id])) is not None
    ]
    differences = [_max_difference(reference[query_id], other[query_id]) for query_id in common]
    return Drift(
        top10_overlap=fmean(overlaps) if overlaps else math.nan,
        kendall_tau=fmean(taus) if taus else math.nan,
        max_score_difference=max(differences, default=0.0),
        queries=len(common),
    )


def _top(scores: Mapping[str, float]) -> set[str]:
    ranked = sorted(scores, key=lambda document_id: (-scores[document_id], document_id))
    return set(ranked[:_TOP])


def _top_overlap(reference: Mapping[str, float], other: Mapping[str, float]) -> float:
    shared = len(_top(reference) & _top(other))
    return shared / min(_TOP, len(reference), len(other))


def _kendall_tau(reference: Mapping[str, float], other: Mapping[str, float]) -> float | None:
    # scipy.stats takes over a second to import: only the eval command's drift needs it.
    from scipy.stats import kendalltau

    common = [document_id for document_id in reference if document_id in other]
    reference_scores = [float(reference[document_id]) for document_id in common]
    other_scores = [float(other[document_id]) for document_id in common]
    if len(set(reference_scores)) < 2 or len(set(other_scores)) < 2:
        return None
    tau = float(kendalltau(reference_scores, other_scores).statistic)
    return None if math.isnan(tau) else tau


def _max_difference(reference: Mapping[str, float], other: Mapping[str, float]) -> float:
    return max(
        (
            abs(float(reference[document_id]) - float(other[document_id]))
            for document_id in reference
            if document_id in other
        ),
        default=0.0,
    )

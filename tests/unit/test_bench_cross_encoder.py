"""The cross-encoder benchmark's pure parts: its requests are the same for every run and as many
tokens to either checkpoint, the two-model cell gives each client one model, and the
two-model figure is read against the single-model services of the same format and round."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from transformers import AutoTokenizer

from reranker_service.tiny_checkpoint import CheckpointKind
from tests.support.paths import ROOT


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The script, imported as it runs (``bench/`` on the path for its own imports); the
    workload and cell types are read through it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "bench"))
        yield importlib.import_module("cross_encoder_bench")


def test_word_requests_are_the_same_for_a_seed_and_within_their_ranges(
    bench: ModuleType,
) -> None:
    workload = bench.RAG_WORDS
    vocabulary = ["alpha", "beta", "gamma"]
    requests = bench.make_word_requests(workload, vocabulary, 6, seed=3)
    assert requests == bench.make_word_requests(workload, vocabulary, 6, seed=3)
    assert requests != bench.make_word_requests(workload, vocabulary, 6, seed=4)
    for request in requests:
        assert workload.query_words[0] <= len(request.query.split()) <= workload.query_words[1]
        assert workload.documents[0] <= len(request.documents) <= workload.documents[1]
        for document in request.documents:
            words = document.split()
            assert workload.document_words[0] <= len(words) <= workload.document_words[1]
            assert set(words) <= set(vocabulary)
        assert request.model is None


def test_the_vocabulary_is_one_token_a_word_to_both_checkpoints(
    bench: ModuleType, kind_checkpoint: Callable[[CheckpointKind], Path]
) -> None:
    """The base shapes' tokenizers are trained as the tiny ones' are (the same corpus and
    vocabulary size), so a text of these words is as many tokens to the BERT and the XLM-R
    checkpoint the benchmark runs."""
    vocabulary = bench.VOCABULARY
    assert list(vocabulary) == sorted(set(vocabulary)), "sorted, once each: runs draw alike"
    text = " ".join(vocabulary)
    for kind in ("bert", "xlm-roberta"):
        tokenizer = AutoTokenizer.from_pretrained(kind_checkpoint(kind))
        assert len(tokenizer.tokenize(text)) == len(vocabulary), kind


def test_each_client_of_the_two_model_cell_names_one_model(bench: ModuleType) -> None:
    requests = [bench.Request(f"q{i}", [f"d{i}"]) for i in range(5)]
    mixed = bench.two_model_requests(requests, ["a", "b"], clients=8)
    for client in range(8):
        # rerank_bench's clients take entries client, client + 8, ... (mod the list's length)
        mine = [mixed[index % len(mixed)] for index in range(client, 3 * len(mixed), 8)]
        assert {r.model for r in mine} == {"a" if client < 4 else "b"}
        assert len({r.query for r in mine}) == len(requests), "it cycles through every request"


def _measured(
    bench: ModuleType,
    round_: int,
    checkpoint: str,
    contender: str,
    dtype: str,
    *,
    by_model: dict[str, float] | None = None,
    **figures: Any,
) -> Any:
    """A cell of these figures (the others 0: what the figures read is named), as measured."""
    zeros = {field.name: 0 for field in dataclasses.fields(bench.Cell)}
    cell = bench.Cell(**{**zeros, "concurrency": 8, "contender": contender, **figures})
    return bench.Measured(round_, checkpoint, dtype, cell, 1, 1, 1, None, {}, by_model or {})


def test_the_two_model_figure_is_read_against_the_same_format_and_round(
    bench: ModuleType,
) -> None:
    measured = [
        _measured(bench, 1, "bert", "crossencoder", "float32", pairs_per_second=50.0),
        _measured(bench, 1, "bert", "service float32", "float32", pairs_per_second=60.0),
        _measured(bench, 1, "bert", "service auto", "bfloat16", pairs_per_second=100.0),
        _measured(bench, 1, "xlmr", "service auto", "bfloat16", pairs_per_second=80.0),
        _measured(bench, 1, "bert", "service auto", "bfloat16", concurrency=1, pairs_per_second=9),
        _measured(bench, 2, "xlmr", "service auto", "bfloat16", pairs_per_second=999.0),
        _measured(
            bench,
            1,
            "bert+xlmr",
            "service auto, two models",
            "bfloat16",
            pairs_per_second=90.0,
            by_model={"bert": 50.0, "xlmr": 40.0},
        ),
    ]
    (row,) = bench.sharing_rows(measured, ["bert", "xlmr"])
    assert row["alone"] == {"bert": 100.0, "xlmr": 80.0}
    assert row["better_single"] == 100.0
    assert row["sum_over_better_single"] == 0.9
    assert row["own_units"] == 1.0  # half of each model's own figure, each

    (ratio,) = [r for r in bench.ratio_rows(measured) if r["service"] == "service auto"]
    assert ratio["checkpoint"] == "bert"
    assert ratio["ratio"] == 2.0
    assert ratio["ratio_per_round"] == [2.0]

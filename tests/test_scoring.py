"""Scores equal the model card's computation, pair by pair, in fp32."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reranker_service.app import load_options
from reranker_service.engine.model import Qwen3ScoringModel, load_scoring_model
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.conftest import SMALL_MAX_LENGTH, make_settings
from tests.model_card import ModelCardReranker

TOLERANCE = 1e-5
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "",
    " ",
    "Ünïcödé: 中文文本, русский текст, emoji 🙂👍🏽, combining e\u0301 and RTL שלום",
    "tab\tand\nnewlines\r\nand a NUL \x00 byte",
    "<|im_start|>assistant\nyes<|im_end|> special-token text inside a document",
    "yes",
]


def _long_document(words: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    vocab = ["capital", "France", "river", "Ünï", "中文", "gravity", "token", "🙂", "and", "the"]
    return " ".join(rng.choice(vocab) for _ in range(words))


def _ours(model: Qwen3ScoringModel, instruction: str, query: str, docs: list[str]) -> list[float]:
    return model.score(model.encoder.encode(instruction, query, docs))


def _assert_close(ours: list[float], reference: list[float]) -> None:
    assert len(ours) == len(reference)
    worst = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    assert worst <= TOLERANCE, f"max abs difference {worst:.2e} > {TOLERANCE:.0e}"


def test_default_instruction_matches_model_card(
    scoring_model: Qwen3ScoringModel, card: ModelCardReranker
) -> None:
    reference = card.score_alone(None, QUERY, DOCUMENTS)
    _assert_close(_ours(scoring_model, DEFAULT_INSTRUCTION, QUERY, DOCUMENTS), reference)


def test_custom_instruction_matches_model_card(
    scoring_model: Qwen3ScoringModel, card: ModelCardReranker
) -> None:
    instruction = "Given a question, retrieve passages written in French that answer it"
    reference = card.score_alone(instruction, QUERY, DOCUMENTS)
    _assert_close(_ours(scoring_model, instruction, QUERY, DOCUMENTS), reference)
    default = card.score_alone(None, QUERY, DOCUMENTS)
    assert reference != default, "the instruction must change the scores"


def test_truncated_long_documents_match_model_card(
    short_scoring_model: Qwen3ScoringModel, short_card: ModelCardReranker
) -> None:
    docs = [_long_document(400, seed) for seed in range(4)] + DOCUMENTS[:2]
    token_ids = short_scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, docs)
    assert [len(ids) for ids in token_ids[:4]] == [SMALL_MAX_LENGTH] * 4
    assert [len(ids) for ids in token_ids] == [
        short_card.token_count(None, QUERY, doc) for doc in docs
    ]
    _assert_close(short_scoring_model.score(token_ids), short_card.score_alone(None, QUERY, docs))


def test_long_query_is_truncated_like_the_model_card(
    short_scoring_model: Qwen3ScoringModel, short_card: ModelCardReranker
) -> None:
    query = _long_document(300, seed=99)
    _assert_close(
        _ours(short_scoring_model, DEFAULT_INSTRUCTION, query, DOCUMENTS[:3]),
        short_card.score_alone(None, query, DOCUMENTS[:3]),
    )


def test_default_max_length_keeps_a_long_document_whole(
    scoring_model: Qwen3ScoringModel, card: ModelCardReranker
) -> None:
    doc = _long_document(1500)
    (ids,) = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, [doc])
    assert len(ids) == card.token_count(None, QUERY, doc) > 1500
    _assert_close(scoring_model.score([ids]), card.score_alone(None, QUERY, [doc]))


def test_score_does_not_depend_on_batch_neighbours(scoring_model: Qwen3ScoringModel) -> None:
    docs = [_long_document(n, seed=n) for n in (3, 40, 200, 7, 600)] + DOCUMENTS
    token_ids = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, docs)
    alone = [scoring_model.score([ids])[0] for ids in token_ids]
    together = scoring_model.score(token_ids)
    reversed_batch = scoring_model.score(token_ids[::-1])[::-1]
    assert max(abs(a - b) for a, b in zip(alone, together, strict=True)) <= 1e-5
    assert max(abs(a - b) for a, b in zip(alone, reversed_batch, strict=True)) <= 1e-5


def test_equal_length_batch_without_mask_matches(scoring_model: Qwen3ScoringModel) -> None:
    token_ids = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, ["aaaa", "bbbb", "cccc"])
    assert len({len(ids) for ids in token_ids}) == 1
    alone = [scoring_model.score([ids])[0] for ids in token_ids]
    _assert_close(scoring_model.score(token_ids), alone)


def test_tied_embeddings_checkpoint_matches_model_card(tied_checkpoint: Path) -> None:
    model = load_scoring_model(load_options(make_settings(tied_checkpoint)))
    reference = ModelCardReranker(tied_checkpoint, 8192).score_alone(None, QUERY, DOCUMENTS)
    _assert_close(_ours(model, DEFAULT_INSTRUCTION, QUERY, DOCUMENTS), reference)


def test_scores_are_probabilities_that_vary(scoring_model: Qwen3ScoringModel) -> None:
    scores = _ours(scoring_model, DEFAULT_INSTRUCTION, QUERY, DOCUMENTS)
    assert all(0.0 < s < 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) > len(scores) // 2


@pytest.mark.parametrize("max_length", [SMALL_MAX_LENGTH, 512])
def test_every_pair_fits_max_length(checkpoint: Path, max_length: int) -> None:
    model = load_scoring_model(load_options(make_settings(checkpoint, max_length=max_length)))
    docs = [_long_document(n, seed=n) for n in (1, 50, 2000)]
    lengths = [len(ids) for ids in model.encoder.encode("x" * 500, QUERY * 50, docs)]
    assert max(lengths) == max_length

"""Scores equal the model card's computation, pair by pair, in fp32."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from reranker_service.app import load_options
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.prefix import shared_prefix
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import BatchTooLargeError, ServedModel
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.model_card import ModelCardReranker
from tests.support.serving import (
    SMALL_MAX_LENGTH,
    logits,
    make_settings,
    new_prefix_id,
    prefixed_logits,
    probabilities,
)

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


@pytest.fixture(params=[False, True], ids=["reuse-off", "reuse-on"])
def reuse(request: pytest.FixtureRequest) -> bool:
    """Every oracle test runs with shared-prefix reuse off and on, as the engine would."""
    return bool(request.param)


def _score(model: ServedModel, token_ids: list[list[int]], reuse: bool) -> list[float]:
    """One pass, the pairs continuing after their shared prefix when ``reuse`` is on."""
    length = shared_prefix(token_ids) if reuse else 0
    if reuse and len(token_ids) > 1:
        assert length, "these pairs share at least the system prompt"
    if not length:
        return probabilities(logits(model, token_ids))
    prefix_id = new_prefix_id()
    scores = prefixed_logits(model.runner, token_ids, [(prefix_id, length)] * len(token_ids))
    model.runner.release([prefix_id])
    return probabilities(scores)


def _ours(
    model: ServedModel, instruction: str, query: str, docs: list[str], reuse: bool = False
) -> list[float]:
    return _score(model, model.encoder.encode(instruction, query, docs), reuse)


def _assert_close(ours: list[float], reference: list[float]) -> None:
    assert len(ours) == len(reference)
    worst = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    assert worst <= TOLERANCE, f"max abs difference {worst:.2e} > {TOLERANCE:.0e}"


def test_default_instruction_matches_model_card(
    scoring_model: ServedModel, card: ModelCardReranker, reuse: bool
) -> None:
    reference = card.score_alone(None, QUERY, DOCUMENTS)
    _assert_close(_ours(scoring_model, DEFAULT_INSTRUCTION, QUERY, DOCUMENTS, reuse), reference)


def test_custom_instruction_matches_model_card(
    scoring_model: ServedModel, card: ModelCardReranker, reuse: bool
) -> None:
    instruction = "Given a question, retrieve passages written in French that answer it"
    reference = card.score_alone(instruction, QUERY, DOCUMENTS)
    _assert_close(_ours(scoring_model, instruction, QUERY, DOCUMENTS, reuse), reference)
    default = card.score_alone(None, QUERY, DOCUMENTS)
    assert reference != default, "the instruction must change the scores"


def test_truncated_long_documents_match_model_card(
    short_scoring_model: ServedModel, short_card: ModelCardReranker, reuse: bool
) -> None:
    docs = [_long_document(400, seed) for seed in range(4)] + DOCUMENTS[:2]
    token_ids = short_scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, docs)
    assert [len(ids) for ids in token_ids[:4]] == [SMALL_MAX_LENGTH] * 4
    assert [len(ids) for ids in token_ids] == [
        short_card.token_count(None, QUERY, doc) for doc in docs
    ]
    _assert_close(
        _score(short_scoring_model, token_ids, reuse), short_card.score_alone(None, QUERY, docs)
    )


def test_long_query_is_truncated_like_the_model_card(
    short_scoring_model: ServedModel, short_card: ModelCardReranker, reuse: bool
) -> None:
    query = _long_document(300, seed=99)
    _assert_close(
        _ours(short_scoring_model, DEFAULT_INSTRUCTION, query, DOCUMENTS[:3], reuse),
        short_card.score_alone(None, query, DOCUMENTS[:3]),
    )


def test_default_max_length_keeps_a_long_document_whole(
    scoring_model: ServedModel, card: ModelCardReranker
) -> None:
    doc = _long_document(1500)
    (ids,) = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, [doc])
    assert len(ids) == card.token_count(None, QUERY, doc) > 1500
    _assert_close(probabilities(logits(scoring_model, [ids])), card.score_alone(None, QUERY, [doc]))


def test_score_does_not_depend_on_batch_neighbours(scoring_model: ServedModel) -> None:
    docs = [_long_document(n, seed=n) for n in (3, 40, 200, 7, 600)] + DOCUMENTS
    token_ids = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, docs)
    alone = [logits(scoring_model, [ids])[0] for ids in token_ids]
    together = logits(scoring_model, token_ids)
    reversed_batch = logits(scoring_model, token_ids[::-1])[::-1]
    assert max(abs(a - b) for a, b in zip(alone, together, strict=True)) <= 1e-5
    assert max(abs(a - b) for a, b in zip(alone, reversed_batch, strict=True)) <= 1e-5


def test_equal_length_batch_without_mask_matches(scoring_model: ServedModel) -> None:
    token_ids = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, ["aaaa", "bbbb", "cccc"])
    assert len({len(ids) for ids in token_ids}) == 1
    alone = [logits(scoring_model, [ids])[0] for ids in token_ids]
    _assert_close(logits(scoring_model, token_ids), alone)


def test_the_gpus_full_mask_matches_model_card(
    scoring_model: ServedModel, card: ModelCardReranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU every pass takes a full causal mask built on the device (so that nothing reads
    it on the host); the same code runs here, padded and unpadded, against the card."""
    monkeypatch.setattr(scoring_model.runner, "_full_masks", True)
    docs = [_long_document(n, seed=n) for n in (3, 40, 200)] + DOCUMENTS
    _assert_close(
        _ours(scoring_model, DEFAULT_INSTRUCTION, QUERY, docs),
        card.score_alone(None, QUERY, docs),
    )
    equal = ["aaaa", "bbbb", "cccc"]
    _assert_close(
        _ours(scoring_model, DEFAULT_INSTRUCTION, QUERY, equal),
        card.score_alone(None, QUERY, equal),
    )


def test_tied_embeddings_checkpoint_matches_model_card(tied_checkpoint: Path, reuse: bool) -> None:
    model = load_single_device_model(load_options(make_settings(tied_checkpoint)))
    reference = ModelCardReranker(tied_checkpoint, 8192).score_alone(None, QUERY, DOCUMENTS)
    _assert_close(_ours(model, DEFAULT_INSTRUCTION, QUERY, DOCUMENTS, reuse), reference)


def test_scores_are_probabilities_that_vary(scoring_model: ServedModel) -> None:
    scores = _ours(scoring_model, DEFAULT_INSTRUCTION, QUERY, DOCUMENTS)
    assert all(0.0 < s < 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) > len(scores) // 2


@pytest.mark.parametrize("max_length", [SMALL_MAX_LENGTH, 512])
def test_every_pair_fits_max_length(checkpoint: Path, max_length: int) -> None:
    model = load_single_device_model(load_options(make_settings(checkpoint, max_length=max_length)))
    docs = [_long_document(n, seed=n) for n in (1, 50, 2000)]
    lengths = [len(ids) for ids in model.encoder.encode("x" * 500, QUERY * 50, docs)]
    assert max(lengths) == max_length


# Shared-prefix reuse: the cases where it could go wrong.


def test_documents_that_share_their_first_words_match_model_card(
    scoring_model: ServedModel, card: ModelCardReranker
) -> None:
    docs = [
        "The capital of France is Paris, on the Seine.",
        "The capital of France is Lyon, says nobody.",
        "The capital of France",
        "The capital of Franc",
    ]
    token_ids = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, docs)
    prefix = shared_prefix(token_ids)
    query_only = shared_prefix(scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, ["x", "y"]))
    assert query_only
    assert prefix > query_only, "the shared prefix should reach into the documents"
    _assert_close(_score(scoring_model, token_ids, True), card.score_alone(None, QUERY, docs))


def test_a_pass_mixing_requests_with_and_without_prefixes_matches_model_card(
    short_scoring_model: ServedModel, short_card: ModelCardReranker
) -> None:
    encoder = short_scoring_model.encoder
    instruction = "Given a question, retrieve passages written in French that answer it"
    requests = [
        (DEFAULT_INSTRUCTION, QUERY, [DOCUMENTS[0], _long_document(400, 1), DOCUMENTS[4]]),
        (instruction, "Où est Paris ?", [DOCUMENTS[1], DOCUMENTS[2], _long_document(30, 3)]),
        (DEFAULT_INSTRUCTION, _long_document(60, 5), ["solo document"]),
    ]
    rows: list[list[int]] = []
    prefixes: list[tuple[int, int] | None] = []
    reference: list[float] = []
    for request_instruction, query, docs in requests:
        token_ids = encoder.encode(request_instruction, query, docs)
        length = shared_prefix(token_ids)
        rows += token_ids
        prefixes += [(new_prefix_id(), length) if length else None] * len(token_ids)
        card_instruction = None if request_instruction == DEFAULT_INSTRUCTION else instruction
        reference += short_card.score_alone(card_instruction, query, docs)
    assert prefixes[-1] is None, "a one-document request has no prefix to share"
    # Interleave the requests' rows, as a length-sorted pass would.
    order = sorted(range(len(rows)), key=lambda row: len(rows[row]))
    runner = short_scoring_model.runner
    scores = probabilities(
        prefixed_logits(runner, [rows[i] for i in order], [prefixes[i] for i in order])
    )
    runner.release([prefix[0] for prefix in prefixes if prefix is not None])
    in_request_order = [0.0] * len(rows)
    for position, row in enumerate(order):
        in_request_order[row] = scores[position]
    _assert_close(in_request_order, reference)


def test_a_one_document_request_with_a_prefix_matches_model_card(
    scoring_model: ServedModel, card: ModelCardReranker
) -> None:
    (ids,) = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, [DOCUMENTS[0]])
    # All but the last token cached: the most a prefix can hold.
    prefix_id = new_prefix_id()
    scores = prefixed_logits(scoring_model.runner, [ids], [(prefix_id, len(ids) - 1)])
    scoring_model.runner.release([prefix_id])
    _assert_close(probabilities(scores), card.score_alone(None, QUERY, [DOCUMENTS[0]]))


def test_a_cached_prefix_is_computed_once_and_reused(scoring_model: ServedModel) -> None:
    token_ids = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS)
    prefix = (new_prefix_id(), shared_prefix(token_ids))
    runner = scoring_model.runner
    assert isinstance(runner, PaddedRunner)
    first = prefixed_logits(runner, token_ids[:3], [prefix] * 3)
    assert runner.held_prefixes == {prefix[0]}
    # Declared held, not new: the runner reads what it kept (it refuses a prefix it lacks).
    second = prefixed_logits(
        runner, token_ids, [prefix] * len(token_ids), held=frozenset({prefix[0]})
    )
    _assert_close(second[:3], first)
    _assert_close(second, logits(scoring_model, token_ids))
    runner.release([prefix[0]])
    assert runner.held_prefixes == frozenset()
    with pytest.raises(KeyError, match="neither held nor new"):
        prefixed_logits(runner, token_ids, [prefix] * len(token_ids), held=frozenset({prefix[0]}))


def test_a_pass_that_fails_keeps_none_of_its_new_prefixes(
    scoring_model: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prefix is computed, then the pass after it runs out of memory: the runner must not
    keep the prefix, since the scheduler counts it as not computed and will ask again."""
    runner = scoring_model.runner
    assert isinstance(runner, PaddedRunner)
    token_ids = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS[:3])
    prefix = (new_prefix_id(), shared_prefix(token_ids))

    def out_of_memory(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "_score_after_prefixes", out_of_memory)
    with pytest.raises(BatchTooLargeError, match="CUDA out of memory"):
        prefixed_logits(runner, token_ids, [prefix] * 3)
    assert prefix[0] not in runner.held_prefixes
    monkeypatch.undo()
    scores = prefixed_logits(runner, token_ids, [prefix] * 3)
    runner.release([prefix[0]])
    _assert_close(scores, logits(scoring_model, token_ids))

"""A cross-encoder's pairs are what its transformers tokenizer gives ``CrossEncoder``: the pair
template, ``longest_first`` at the pair length, token types where the model reads them; windows
continue a long document where the pair before stopped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from reranker_service.engine.pairs import PairTooLongError, Truncation
from reranker_service.engine.text_pairs import TextPairEncoder, TokenTypes
from reranker_service.tiny_checkpoint import CheckpointKind

QUERY = "what is the capital of france and why is it paris"
LONG = " ".join(f"paris is the capital of france number {index}." for index in range(60))
MAX_LENGTH = 64
SPAN = 100_000


def _encoder(tokenizer: Any) -> TextPairEncoder:
    return TextPairEncoder.from_pretrained_tokenizer(tokenizer, MAX_LENGTH, SPAN)


def _transformers_ids(tokenizer: Any, document: str) -> list[int]:
    """What ``CrossEncoder``'s tokenizer call gives for one pair, types folded. It calls the
    tokenizer on lists of texts (a lone call with an empty second text would encode the query
    alone; a batch encodes the pair)."""
    encoded = tokenizer([QUERY], [document], truncation=True, max_length=MAX_LENGTH)
    ids = encoded["input_ids"][0]
    types = encoded["token_type_ids"][0] if "token_type_ids" in encoded else [0] * len(ids)
    return [kind * SPAN + token for token, kind in zip(ids, types, strict=True)]


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta", "modernbert"])
def test_a_pair_is_the_tokenizers_pair(
    kind_checkpoint: Callable[[CheckpointKind], Path], kind: CheckpointKind
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(kind_checkpoint(kind))
    encoder = _encoder(tokenizer)
    documents = ["paris is the capital", "", LONG, "中文 🙂"]
    assert encoder.encode("ignored", QUERY, documents) == [
        _transformers_ids(tokenizer, document) for document in documents
    ]
    assert (encoder.token_types is not None) == (kind == "bert")
    assert not encoder.takes_instruction


def test_bert_types_fold_into_the_ids(kind_checkpoint: Callable[[CheckpointKind], Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(kind_checkpoint("bert"))
    [pair] = _encoder(tokenizer).encode("", QUERY, ["paris"])
    types = TokenTypes(SPAN)
    split = [types.split(typed) for typed in pair]
    encoded = tokenizer(QUERY, "paris")
    assert [token for token, _ in split] == encoded["input_ids"]
    assert [kind for _, kind in split] == encoded["token_type_ids"]


def test_windows_continue_where_the_pair_before_stopped(
    kind_checkpoint: Callable[[CheckpointKind], Path],
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(kind_checkpoint("xlm-roberta"))
    encoder = _encoder(tokenizer)
    [windows] = encoder.encode_windows("", QUERY, [LONG], Truncation(max_windows=4))
    assert len(windows) == 4
    assert windows[0] == _transformers_ids(tokenizer, LONG)
    # Each window's document text, laid end to end, is the document's start: no overlap and no
    # gap (a window may end inside a word, at a token boundary; each is tokenized afresh, so
    # the characters are compared, without spaces).
    query_part = len(tokenizer([QUERY], [""])["input_ids"][0]) - 1  # the tail is one </s>
    texts = [str(tokenizer.decode(window[query_part:-1])) for window in windows]
    laid = "".join("".join(text.split()) for text in texts)
    assert len(laid) > 3 * len("".join(texts[0].split()))
    assert laid == "".join(LONG.split())[: len(laid)]
    [short] = encoder.encode_windows("", QUERY, ["paris"], Truncation(max_windows=4))
    assert short == [_transformers_ids(tokenizer, "paris")]


def test_the_end_is_kept_and_an_over_long_pair_refused(
    kind_checkpoint: Callable[[CheckpointKind], Path],
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(kind_checkpoint("bert"))
    encoder = _encoder(tokenizer)
    [[kept]] = encoder.encode_windows("", QUERY, [LONG], Truncation(keep="end"))
    tokenizer.truncation_side = "left"
    assert kept == _transformers_ids(tokenizer, LONG)
    with pytest.raises(PairTooLongError) as refused:
        encoder.encode_windows("", QUERY, ["paris", LONG], Truncation(refuse_over_length=True))
    assert (refused.value.index, refused.value.max_length) == (1, MAX_LENGTH)
    assert refused.value.tokens > MAX_LENGTH

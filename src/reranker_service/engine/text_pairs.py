"""A cross-encoder's pair encoding: the tokenizer's own pair template (``[CLS] query [SEP]
document [SEP]``, ``<s> query </s></s> document </s>``, ...) cut with ``longest_first`` to the
pair budget, exactly as sentence-transformers' ``CrossEncoder`` encodes a pair (its tokenizer
call with ``truncation=True``).

Where the model reads token types (BERT, ELECTRA: the query's tokens are type 0, the
document's type 1) they travel inside the token ids, as ``type * type_span + id``: a pair stays
one list of integers for the scheduler, the cache key covers its types, and the runner splits
them again (``TokenTypes.split``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tokenizers import Encoding, Tokenizer

from reranker_service.engine.pairs import (
    PairTooLongError,
    Truncation,
    cut_documents,
    text_after,
)

_FILLER_PAIR = ("what is a reranker", "a reranker orders documents by their relevance")


@dataclass(frozen=True)
class TokenTypes:
    """How a token's type is folded into its id: ``type * span + id``, ``span`` above every id
    the tokenizer or the model knows."""

    span: int

    def fold(self, encoding: Encoding) -> list[int]:
        span = self.span
        return [
            type_id * span + token
            for token, type_id in zip(encoding.ids, encoding.type_ids, strict=True)
        ]

    def split(self, typed: int) -> tuple[int, int]:
        """``(token id, type)`` of a folded id."""
        return typed % self.span, typed // self.span


def _copy(backend: Tokenizer) -> Tokenizer:
    """A private copy with no padding and no truncation, whose settings nobody else changes."""
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _cut_copy(backend: Tokenizer, max_length: int, direction: str) -> Tokenizer:
    """A private copy that cuts a pair as ``CrossEncoder``'s tokenizer call does."""
    copy = _copy(backend)
    copy.enable_truncation(max_length, strategy="longest_first", direction=direction)
    return copy


class TextPairEncoder:
    """(query, document) pairs through the tokenizer's pair template, cut as ``CrossEncoder``
    cuts them. Several threads may encode at once: each copy of the Rust tokenizer has its
    truncation set once, here, and never again."""

    takes_instruction = False

    def __init__(self, backend: Tokenizer, max_length: int, token_types: TokenTypes | None) -> None:
        self._whole = _copy(backend)
        self._cut: dict[Literal["start", "end"], Tokenizer] = {
            "start": _cut_copy(backend, max_length, "right"),
            "end": _cut_copy(backend, max_length, "left"),
        }
        self._max_length = max_length
        self._token_types = token_types
        self._filler = self._ids(self._cut["start"].encode(*_FILLER_PAIR))

    @classmethod
    def from_pretrained_tokenizer(
        cls, tokenizer: Any, max_length: int, type_span: int
    ) -> TextPairEncoder:
        """For a transformers fast tokenizer; token types are folded in where it gives them
        to its model (``token_type_ids`` among its ``model_input_names``)."""
        typed = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        return cls(backend, max_length, TokenTypes(type_span) if typed else None)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def token_types(self) -> TokenTypes | None:
        """How token types are folded into the ids; None where the model reads none."""
        return self._token_types

    @property
    def filler_ids(self) -> Sequence[int]:
        return self._filler

    def _ids(self, encoding: Encoding) -> list[int]:
        if self._token_types is None:
            return list(encoding.ids)
        return self._token_types.fold(encoding)

    def encode(self, instruction: str, query: str, documents: Sequence[str]) -> list[list[int]]:
        """One id list per document; ``instruction`` is not part of a cross-encoder's pair."""
        encodings = self._cut["start"].encode_batch([(query, document) for document in documents])
        return [self._ids(encoding) for encoding in encodings]

    def encode_windows(
        self,
        instruction: str,
        query: str,
        documents: Sequence[str],
        truncation: Truncation,
    ) -> list[list[list[int]]]:
        """Per document, its pairs: the default cut pair, then (with ``max_windows``) pairs of
        the document's rest after the last token the one before kept, while it was cut. With
        ``keep="end"`` the one pair is cut from the left instead; with ``refuse_over_length`` a
        pair over ``max_length`` raises ``PairTooLongError``."""
        if truncation.max_document_tokens is not None:
            documents = cut_documents(self._whole, documents, truncation.max_document_tokens)
        if truncation.refuse_over_length:
            whole = self._whole.encode_batch([(query, document) for document in documents])
            for index, encoding in enumerate(whole):
                if len(encoding.ids) > self._max_length:
                    raise PairTooLongError(index, len(encoding.ids), self._max_length)
        if truncation.keep == "end":
            cut = self._cut["end"].encode_batch([(query, document) for document in documents])
            return [[self._ids(encoding)] for encoding in cut]
        return [self._windows(query, document, truncation.max_windows) for document in documents]

    def _windows(self, query: str, document: str, max_windows: int) -> list[list[int]]:
        pairs: list[list[int]] = []
        rest = document
        while True:
            encoding = self._cut["start"].encode(query, rest)
            pairs.append(self._ids(encoding))
            if len(pairs) >= max_windows:
                return pairs
            kept_end = _kept_end(encoding)
            own = len(self._whole.encode(rest, add_special_tokens=False).ids)
            kept = sum(1 for sequence in encoding.sequence_ids if sequence == 1)
            if kept >= own or kept_end <= 0:
                return pairs
            rest = text_after(rest, kept_end)
            if not rest:
                return pairs


def _kept_end(encoding: Encoding) -> int:
    """Where the document's last kept token ends, in its characters (0: none was kept)."""
    ends = [
        end
        for sequence, (_, end) in zip(encoding.sequence_ids, encoding.offsets, strict=True)
        if sequence == 1
    ]
    return ends[-1] if ends else 0

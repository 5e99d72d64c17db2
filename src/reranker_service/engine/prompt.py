"""The Qwen3-Reranker prompt (from the model card) and its token-level truncation: the pair
encoder of Qwen3-Reranker, in its causal-LM and its sequence-classification form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from reranker_service.engine.pairs import (
    PairTooLongError,
    Truncation,
    cut_documents,
    text_after,
)

PROMPT_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def format_pair(instruction: str, query: str, document: str) -> str:
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


class PromptEncoder:
    """Turns (instruction, query, documents) into model-ready token ids.

    Works on a private copy of the Rust tokenizer with truncation and padding switched off, so
    several threads can encode at once (the transformers wrapper mutates truncation state on
    every call) and the GIL is released while Rust does the work. Truncating the id list at its
    end equals the model card's ``truncation='longest_first'`` on a single sequence.
    """

    def __init__(self, backend: Tokenizer, max_length: int) -> None:
        self._backend = backend
        self.prefix_ids: tuple[int, ...] = tuple(
            backend.encode(PROMPT_PREFIX, add_special_tokens=False).ids
        )
        self.suffix_ids: tuple[int, ...] = tuple(
            backend.encode(PROMPT_SUFFIX, add_special_tokens=False).ids
        )
        self._max_length = max_length
        self.text_budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.text_budget < 1:
            raise ValueError(
                f"max_length {max_length} leaves no room for text after the "
                f"{len(self.prefix_ids) + len(self.suffix_ids)}-token prompt template"
            )

    takes_instruction = True

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def filler_ids(self) -> Sequence[int]:
        return self.prefix_ids

    def single_token_id(self, word: str) -> int | None:
        """The id of ``word`` where it is one token of the vocabulary, and encodes as it."""
        ids = self._backend.encode(word, add_special_tokens=False).ids
        token = self._backend.token_to_id(word)
        return token if len(ids) == 1 and ids[0] == token else None

    @classmethod
    def from_pretrained_tokenizer(cls, tokenizer: Any, max_length: int) -> PromptEncoder:
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        return cls(backend, max_length)

    def encode(self, instruction: str, query: str, documents: Sequence[str]) -> list[list[int]]:
        """One id list per document: prefix + text cut to the budget + suffix."""
        texts = [format_pair(instruction, query, document) for document in documents]
        encodings = self._backend.encode_batch(texts, add_special_tokens=False)
        prefix, suffix, budget = list(self.prefix_ids), list(self.suffix_ids), self.text_budget
        return [prefix + encoding.ids[:budget] + suffix for encoding in encodings]

    def document_windows(
        self, instruction: str, query: str, document: str, truncation: Truncation
    ) -> list[str]:
        """The document text each of its pairs carries (before the card's truncation at the
        budget): the whole document, then, while the one before did not fit and windows are
        left, the rest after the last token it kept (leading whitespace skipped). Windows do
        not overlap. With ``keep="end"``, the one window is the document's longest end, cut at a
        token boundary, that fits. Raises ``PairTooLongError`` for a refused over-long pair."""
        header = len(format_pair(instruction, query, ""))
        budget = self.text_budget
        windows = [document]
        while True:
            encoding = self._backend.encode(
                format_pair(instruction, query, windows[-1]), add_special_tokens=False
            )
            excess = len(encoding.ids) - budget
            if excess <= 0:
                return windows
            if truncation.refuse_over_length:
                raise PairTooLongError(
                    0, len(encoding.ids) + self.max_length - budget, self.max_length
                )
            offsets = encoding.offsets
            if truncation.keep == "end":
                first_own = next(
                    (i for i, (start, _) in enumerate(offsets) if start >= header), len(offsets)
                )
                if first_own + excess > len(offsets):
                    return windows  # the query alone overflows: the card's cut applies
                windows[-1] = text_after(windows[-1], offsets[first_own + excess - 1][1] - header)
                continue
            if len(windows) >= truncation.max_windows:
                return windows
            kept_end = offsets[budget - 1][1] - header
            rest = text_after(windows[-1], kept_end) if kept_end > 0 else ""
            if not rest:
                return windows
            windows.append(rest)

    def encode_windows(
        self,
        instruction: str,
        query: str,
        documents: Sequence[str],
        truncation: Truncation,
    ) -> list[list[list[int]]]:
        """Per document, the token ids of each of its pairs (see ``document_windows``); with
        the default ``Truncation``, one pair each, equal to ``encode``'s."""
        if truncation.max_document_tokens is not None:
            documents = cut_documents(self._backend, documents, truncation.max_document_tokens)
        pairs = self.encode(instruction, query, documents)
        result: list[list[list[int]]] = []
        for index, (document, ids) in enumerate(zip(documents, pairs, strict=True)):
            # Under the budget, or cut as the card cuts: ``encode`` already made the one pair.
            if len(ids) < self.max_length or truncation.cuts_by_default:
                result.append([ids])
                continue
            try:
                windows = self.document_windows(instruction, query, document, truncation)
            except PairTooLongError as exc:
                raise PairTooLongError(index, exc.tokens, exc.max_length) from None
            if truncation.keep == "end":
                result.append(self.encode(instruction, query, windows))
            else:  # the first window is the card's pair, made above
                result.append([ids, *self.encode(instruction, query, windows[1:])])
        return result

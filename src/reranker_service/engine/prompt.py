"""The Qwen3-Reranker prompt (from the model card) and its token-level truncation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tokenizers import Tokenizer

PROMPT_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def format_pair(instruction: str, query: str, document: str) -> str:
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


@dataclass(frozen=True)
class Truncation:
    """What to do with a document that does not fit a pair's token budget. The default is the
    model card's: its end is cut."""

    max_document_tokens: int | None = None
    """Cut the document's own tokens to this many before the prompt is built (Cohere v2's
    ``max_tokens_per_doc``)."""
    max_windows: int = 1
    """Score a document that does not fit as up to this many consecutive windows (Cohere v1's
    ``max_chunks_per_doc``): the first is the model card's truncated pair, each next one the
    document from where the one before it stopped, again truncated as the card does."""
    keep: Literal["start", "end"] = "start"
    """Which part of a document too long for one pair is kept: its start (the card's) or its
    end (TEI's ``truncation_direction: Left``)."""
    refuse_over_length: bool = False
    """Refuse a pair over the budget instead of cutting it (TEI's ``truncate: false``)."""

    @property
    def cuts_like_the_card(self) -> bool:
        """An over-long pair is cut at its end, once, and nothing else: the model card's."""
        return self.max_windows == 1 and self.keep == "start" and not self.refuse_over_length


class PairTooLongError(ValueError):
    """A pair does not fit ``max_length`` and the request asked not to truncate."""

    def __init__(self, index: int, tokens: int, max_length: int) -> None:
        super().__init__(
            f"document {index} makes a pair of {tokens} tokens, more than max_length {max_length}"
        )
        self.index = index
        self.tokens = tokens
        self.max_length = max_length


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
        self.max_length = max_length
        self.text_budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.text_budget < 1:
            raise ValueError(
                f"max_length {max_length} leaves no room for text after the "
                f"{len(self.prefix_ids) + len(self.suffix_ids)}-token prompt template"
            )

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

    def cut_documents(self, documents: Sequence[str], max_tokens: int) -> list[str]:
        """Each document cut after its first ``max_tokens`` tokens (tokenized on its own), at
        the end of that token's characters."""
        encodings = self._backend.encode_batch(list(documents), add_special_tokens=False)
        return [
            document
            if len(encoding.ids) <= max_tokens
            else document[: encoding.offsets[max_tokens - 1][1]]
            for document, encoding in zip(documents, encodings, strict=True)
        ]

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
                windows[-1] = _after(windows[-1], offsets[first_own + excess - 1][1] - header)
                continue
            if len(windows) >= truncation.max_windows:
                return windows
            kept_end = offsets[budget - 1][1] - header
            rest = _after(windows[-1], kept_end) if kept_end > 0 else ""
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
            documents = self.cut_documents(documents, truncation.max_document_tokens)
        pairs = self.encode(instruction, query, documents)
        result: list[list[list[int]]] = []
        for index, (document, ids) in enumerate(zip(documents, pairs, strict=True)):
            # Under the budget, or cut as the card cuts: ``encode`` already made the one pair.
            if len(ids) < self.max_length or truncation.cuts_like_the_card:
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


def _after(text: str, end: int) -> str:
    """``text`` after its first ``end`` characters, leading whitespace skipped."""
    return text[end:].lstrip()

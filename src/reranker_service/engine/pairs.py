"""What every pair encoder shares: how a long document is truncated, the error of a pair that
may not be, and the encoder's interface. Two encoders implement it: ``prompt.PromptEncoder``
(Qwen3-Reranker's prompt around the pair) and ``text_pairs.TextPairEncoder`` (the tokenizer's
own pair template, as sentence-transformers' ``CrossEncoder`` encodes a pair)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True)
class Truncation:
    """What to do with a document that does not fit a pair's token budget. The default is the
    model's own: the model card's cut at the end for Qwen3-Reranker, the tokenizer's
    ``longest_first`` for a cross-encoder."""

    max_document_tokens: int | None = None
    """Cut the document's own tokens to this many before the pair is built (Cohere v2's
    ``max_tokens_per_doc``)."""
    max_windows: int = 1
    """Score a document that does not fit as up to this many consecutive windows (Cohere v1's
    ``max_chunks_per_doc``): the first is the default truncated pair, each next one the
    document from where the one before it stopped, again truncated by default."""
    keep: Literal["start", "end"] = "start"
    """Which part of a document too long for one pair is kept: its start (the default) or its
    end (TEI's ``truncation_direction: Left``)."""
    refuse_over_length: bool = False
    """Refuse a pair over the budget instead of cutting it (TEI's ``truncate: false``)."""

    @property
    def cuts_by_default(self) -> bool:
        """An over-long pair is cut as the model's default cuts it, once, and nothing else."""
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


class PairEncoder(Protocol):
    """Turns (instruction, query, documents) into each pair's token ids, the way the served
    checkpoint expects them. Safe to call from several threads at once."""

    @property
    def max_length(self) -> int:
        """The most tokens a pair has, special tokens and prompt included."""
        ...

    @property
    def takes_instruction(self) -> bool:
        """Whether the instruction is part of a pair (a prompted model); an encoder that ignores
        it makes a request's ``instruction`` an error, not a no-op."""
        ...

    @property
    def filler_ids(self) -> Sequence[int]:
        """Tokens to fill the start-up measurement's passes with: any real tokens."""
        ...

    def encode(self, instruction: str, query: str, documents: Sequence[str]) -> list[list[int]]:
        """One token-id list per document, cut by default to ``max_length``."""
        ...

    def encode_windows(
        self,
        instruction: str,
        query: str,
        documents: Sequence[str],
        truncation: Truncation,
    ) -> list[list[list[int]]]:
        """Per document, the token ids of each of its pairs; with the default ``Truncation``
        one pair each, equal to ``encode``'s. Raises ``PairTooLongError`` for a refused
        over-long pair."""
        ...


def text_after(text: str, end: int) -> str:
    """``text`` after its first ``end`` characters, leading whitespace skipped: where a
    document's next window starts."""
    return text[end:].lstrip()


def cut_documents(backend: Tokenizer, documents: Sequence[str], max_tokens: int) -> list[str]:
    """Each document cut after its first ``max_tokens`` tokens (tokenized on its own, by
    ``backend``, which neither truncates nor pads), at the end of that token's characters."""
    encodings = backend.encode_batch(list(documents), add_special_tokens=False)
    return [
        document
        if len(encoding.ids) <= max_tokens
        else document[: encoding.offsets[max_tokens - 1][1]]
        for document, encoding in zip(documents, encodings, strict=True)
    ]

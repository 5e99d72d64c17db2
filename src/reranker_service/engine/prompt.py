"""The Qwen3-Reranker prompt (from the model card) and its token-level truncation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

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

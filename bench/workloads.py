"""Benchmark workloads: fixed seeds, documents of drawn token lengths, in the model's tokenizer."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_WORDS = [
    "the", "capital", "of", "france", "paris", "river", "gravity", "batch", "token", "query",
    "document", "relevance", "model", "search", "engine", "retrieval", "passage", "answer",
    "question", "city", "population", "history", "science", "energy", "water", "light",
    "system", "network", "language", "data", "market", "music", "film", "health", "school",
]  # fmt: skip


@dataclass(frozen=True)
class Workload:
    name: str
    documents: int
    draw_length: Callable[[random.Random], int]
    description: str


def _rag_length(rng: random.Random) -> int:
    return min(1024, max(16, round(rng.lognormvariate(math.log(250), 0.6))))


WORKLOADS = {
    "short": Workload("short", 20, lambda rng: rng.randint(30, 100), "20 docs of 30-100 tokens"),
    "rag": Workload("rag", 50, _rag_length, "50 docs, log-normal around 250 tokens, cap 1024"),
    "long": Workload("long", 8, lambda rng: rng.randint(1000, 4000), "8 docs of 1-4k tokens"),
}


@dataclass(frozen=True)
class Request:
    query: str
    documents: list[str]
    model: str | None = None
    """The served model a request names (a service with several); None names none."""


def _text_of_tokens(tokenizer: Any, rng: random.Random, tokens: int) -> str:
    words = " ".join(rng.choice(_WORDS) for _ in range(tokens * 2 + 8))
    ids = tokenizer.encode(words, add_special_tokens=False)[:tokens]
    return str(tokenizer.decode(ids))


def make_requests(tokenizer: Any, workload: Workload, count: int, seed: int) -> list[Request]:
    """``count`` distinct requests; the same seed gives the same texts for every contender."""
    rng = random.Random(f"{workload.name}-{seed}")
    return [
        Request(
            query=_text_of_tokens(tokenizer, rng, rng.randint(8, 16)),
            documents=[
                _text_of_tokens(tokenizer, rng, workload.draw_length(rng))
                for _ in range(workload.documents)
            ],
        )
        for _ in range(count)
    ]


@dataclass(frozen=True)
class WordWorkload:
    """Requests drawn in words, not in a tokenizer's tokens: the same texts for checkpoints whose
    tokenizers differ (a BERT and an XLM-RoBERTa cross-encoder, say). Each range is inclusive."""

    name: str
    query_words: tuple[int, int]
    documents: tuple[int, int]
    document_words: tuple[int, int]
    description: str


RAG_WORDS = WordWorkload(
    "rag-words", (8, 12), (20, 50), (60, 200), "a ~10-word query, 20-50 docs of 60-200 words"
)
"""A retrieval-augmented generation request as a cross-encoder sees it."""


def make_word_requests(
    workload: WordWorkload, vocabulary: Sequence[str], count: int, seed: int
) -> list[Request]:
    """``count`` distinct requests of words drawn from ``vocabulary``; the same seed and
    vocabulary give the same texts."""
    rng = random.Random(f"{workload.name}-{seed}")

    def text(words: tuple[int, int]) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(*words)))

    return [
        Request(
            query=text(workload.query_words),
            documents=[
                text(workload.document_words) for _ in range(rng.randint(*workload.documents))
            ],
        )
        for _ in range(count)
    ]

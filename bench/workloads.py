"""Benchmark workloads: fixed seeds, documents of drawn token lengths, in the model's tokenizer."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
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

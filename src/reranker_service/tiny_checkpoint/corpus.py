"""The text the test tokenizers are trained on.

The Qwen3 tokenizer learns from ``QWEN3_LINES`` alone and must keep doing so: its vocabulary,
and so every test checkpoint's weights for a seed, follow from these exact lines. The encoder
tokenizers learn from ``ENCODER_LINES``, the same lines plus everyday English, so that the words
of test queries and documents come out as word pieces rather than unknown tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

QWEN3_LINES: tuple[str, ...] = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".',
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query",
    "<Query>: what is the capital of France?",
    "<Document>: Paris is the capital and most populous city of France.",
    "system user assistant yes no yes no yes no",
    "The quick brown fox jumps over the lazy dog. A reranker orders documents by relevance.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Retrieval augmented generation puts a retriever in front of a language model.",
    "Prometheus scrapes metrics; Grafana draws dashboards; the GPU does the work.",
    "Ünïcödé text, 中文文本, русский текст, emoji 🙂 and numbers 0123456789.",
)
"""The Qwen3 tokenizer's training lines, unchanged since the first test checkpoint."""

_EVERYDAY_LINES: tuple[str, ...] = (
    "What is the capital of Germany? Berlin is the capital of Germany and its largest city.",
    "How do I bake bread at home? Mix flour, water, salt and yeast, then bake it in an oven.",
    "Which planet is closest to the sun? Mercury is the smallest planet and the closest one.",
    "Why is the sky blue during the day? Sunlight is scattered by the air above us.",
    "Who wrote this book, and when was it first published? She wrote it in the year 1999.",
    "A document can be long or short; this one has a few words in it, another has many more.",
    "The weather today is sunny and warm, but it may rain tomorrow in the north of the country.",
    "Python is a programming language used for data science, web servers and machine learning.",
    "The river flows through the old town, past the market, the church and a small bridge.",
    "Search engines rank pages, and a cross encoder scores each query and passage together.",
    "Doctors recommend drinking water, sleeping well and walking for thirty minutes each day.",
    "The company reported higher sales this quarter; its shares rose by five percent on Monday.",
    "I think you should read the first page again; we found an answer to your question there.",
    "Is it true or false? Yes, it is true. No, that was not the right answer for them.",
    "Numbers like 1, 2, 3, 10, 42, 100 and 2024 appear in dates, prices and page counts.",
)
"""Common English, questions and answers, for the encoder tokenizers' vocabularies."""

ENCODER_LINES: tuple[str, ...] = QWEN3_LINES + _EVERYDAY_LINES
"""The encoder tokenizers' training lines."""


def repeated(lines: Sequence[str], repeats: int) -> Iterator[str]:
    """``lines`` over and over, ``repeats`` times: enough counts for the trainers' merges."""
    for _ in range(repeats):
        yield from lines

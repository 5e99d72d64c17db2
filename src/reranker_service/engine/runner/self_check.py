"""The self-check a compiled runner passes before it serves: a probe of passes like the ones
traffic brings, scored by it and by an eager runner, every score within the number format's
bound of the eager one's.

The probe mixes requests with a shared prefix and plain pairs, reaches several buckets (the
smallest, graphed ones, and the largest), runs them in an order unlike the one they were
compiled and captured in, and launches every pass before it reads any scores, as a GPU worker
overlaps them: a graph whose static buffers a later replay overwrote too early, a bucket compiled
wrong, or a mask off by a tile shows up as a score that is off.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reranker_service.engine.prefix import shared_prefix_length
from reranker_service.engine.runner.packing import stream_tokens
from reranker_service.engine.runner.protocol import ModelRunner, PassBatch, PassPair
from reranker_service.engine.scoring import probability

FP32_SCORE_BOUND = 1e-4
HALF_SCORE_BOUND = 0.02
"""Largest |P(yes) - P(yes) of the eager runner| a compiled runner may give: fp32 adds up in
another order only; bf16 and fp16 round at every step (``precision.BF16_SELF_CHECK_BOUND``)."""

_WORDS = (
    "reranker", "passage", "query", "relevance", "river", "capital", "gravity", "token",
    "Paris", "energy", "market", "light", "sugar", "the", "of", "and", "中文", "Ünï", "🙂",
)  # fmt: skip
_INSTRUCTIONS = (
    "Given a web search query, retrieve relevant passages that answer the query",
    "Given a question, find the passage that answers it",
)


class SelfCheckMismatchError(Exception):
    """The compiled runner's scores differ from the eager runner's by more than the bound."""


def score_bound(dtype: str) -> float:
    return FP32_SCORE_BOUND if dtype == "float32" else HALF_SCORE_BOUND


@dataclass(frozen=True)
class ProbeRequest:
    """One request of the probe, as the engine would queue it: its pairs' token ids, and the
    length of the prefix they share (0: none)."""

    sequences: tuple[tuple[int, ...], ...]
    prefix_length: int


Encode = Callable[[str, str, Sequence[str]], list[list[int]]]
"""The served prompt encoder: ``(instruction, query, documents)`` to each pair's token ids."""


def probe_requests(encode: Encode, max_length: int, seed: int = 0) -> list[ProbeRequest]:
    """Requests of documents from one word to ``max_length`` tokens: two with a shared prefix
    (different instructions), and plain pairs, each request's pairs of unlike lengths."""
    rng = random.Random(seed)

    def document(words: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(words))

    lengths = [1, 3, 12, 40, 90, max_length // 3, max_length // 2, max_length]
    requests = []
    for index, instruction in enumerate(_INSTRUCTIONS):
        documents = [document(words) for words in lengths[index::2] + lengths[: 2 + index]]
        sequences = encode(instruction, f"probe query {index}: {document(6)}", documents)
        prefix = shared_prefix_length(sequences)
        requests.append(ProbeRequest(tuple(map(tuple, sequences)), prefix))
    for words in lengths:
        (sequence,) = encode(_INSTRUCTIONS[0], document(4), [document(words)])
        requests.append(ProbeRequest((tuple(sequence),), 0))
    return requests


def probe_passes(requests: Sequence[ProbeRequest], buckets: Sequence[int]) -> list[PassBatch]:
    """Passes over the probe's pairs: a plain pair alone, a prefixed request alone, a mixed
    pass, and passes filled towards the middle and the largest bucket; ordered smallest,
    largest, middle, then the small mixed ones, so that they run in an order unlike the
    buckets' (compiled from the largest, captured from the smallest)."""
    prefix_ids = itertools.count()
    pools = [_pairs_of(request, next(prefix_ids)) for request in requests]
    with_prefix = [bool(request.prefix_length) for request in requests]
    prefixed = [pool for pool, has in zip(pools, with_prefix, strict=True) if has]
    plain = [pool[0] for pool, has in zip(pools, with_prefix, strict=True) if not has]
    # Round robin over the requests, so that a filled pass mixes them.
    everything = [
        pair for turn in itertools.zip_longest(*pools) for pair in turn if pair is not None
    ]
    largest = max(buckets)
    middle = sorted(buckets)[len(buckets) // 2]
    passes = [
        PassBatch([min(plain, key=lambda pair: len(pair.tokens))]),
        _filled(everything, largest),
        _filled(everything[::-1], middle),
        PassBatch(prefixed[0]) if prefixed else None,
        PassBatch([*prefixed[-1], *plain[:2]]) if prefixed else None,
    ]
    return [batch for batch in passes if batch is not None and stream_tokens(batch) <= largest]


def _pairs_of(request: ProbeRequest, prefix_id: int) -> list[PassPair]:
    if not request.prefix_length:
        return [PassPair(sequence) for sequence in request.sequences]
    return [PassPair(sequence, prefix_id, request.prefix_length) for sequence in request.sequences]


def _filled(pairs: Sequence[PassPair], tokens: int) -> PassBatch:
    """As many of ``pairs`` as fit a stream of ``tokens``, in their order, and at least one."""
    chosen: list[PassPair] = []
    for pair in pairs:
        if chosen and stream_tokens(PassBatch([*chosen, pair])) > tokens:
            continue
        chosen.append(pair)
    return PassBatch(chosen)


@dataclass(frozen=True)
class SelfCheckResult:
    pairs: int
    passes: int
    max_difference: float
    """Largest |P(yes) - P(yes) of the eager runner| over the probe's pairs."""


def self_check(
    candidate: ModelRunner,
    reference: ModelRunner,
    passes: Sequence[PassBatch],
    bound: float,
) -> SelfCheckResult:
    """Score ``passes`` with ``candidate`` (every pass launched before any result is read) and
    with ``reference`` (one at a time, computing its prefixes anew); raise
    ``SelfCheckMismatchError`` unless every score is within ``bound`` of the reference's."""
    pending = [candidate.launch(batch) for batch in passes]
    candidate_scores = [scores.result() for scores in pending]
    worst = 0.0
    for batch, scores in zip(passes, candidate_scores, strict=True):
        prefixes = frozenset(pair.prefix_id for pair in batch.pairs if pair.prefix_id is not None)
        expected = reference.launch(PassBatch(batch.pairs, prefixes)).result()
        reference.release(list(prefixes))
        for ours, theirs in zip(scores, expected, strict=True):
            difference = abs(probability(ours) - probability(theirs))
            if not difference <= bound:  # NaN included
                raise SelfCheckMismatchError(
                    f"a score differs from the eager runner's by {difference:.3g} > {bound} "
                    f"(a pass of {len(batch.pairs)} pairs, {stream_tokens(batch)} tokens)"
                )
            worst = max(worst, difference)
    return SelfCheckResult(
        pairs=sum(len(batch.pairs) for batch in passes),
        passes=len(passes),
        max_difference=worst,
    )

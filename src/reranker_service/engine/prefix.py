"""Shared prompt prefixes: the tokens every pair of a request starts with (the system prompt, the
instruction, the query), computed once per request instead of once per pair.

The reusable part is the longest common prefix of the request's token sequences, so a tokenizer
merge across the ``<Document>: `` boundary can never change a score: only tokens that are equal
in every pair are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``sequences`` have in common, leaving every sequence at least
    one token of its own: a score is read at a pair's last token, which must be computed."""
    if not sequences:
        return 0
    first = sequences[0]
    limit = min(len(sequence) for sequence in sequences) - 1
    length = 0
    while length < limit and all(sequence[length] == first[length] for sequence in sequences):
        length += 1
    return length


MIN_SAVED_SHARE = 0.1
"""Share a prefix only if that saves at least this much of the request's tokens. Below it, the
prefix's own pass and the masked attention of the pairs after it cost more than they save: on
the benchmark's ``long`` workload (8 documents of 1-4 k tokens, a 77-token prefix, 3 % saved),
reuse ran at 0.67-1.14x the pairs/s of no reuse."""


def shared_prefix(sequences: Sequence[Sequence[int]]) -> SharedPrefix | None:
    """The prefix worth sharing among ``sequences``, if any: none for fewer than two, where
    computing it apart would only add a pass, nor where it saves under ``MIN_SAVED_SHARE``."""
    if len(sequences) < 2:
        return None
    length = shared_prefix_length(sequences)
    saved = (len(sequences) - 1) * length
    if not length or saved < MIN_SAVED_SHARE * sum(len(sequence) for sequence in sequences):
        return None
    return SharedPrefix(tuple(sequences[0][:length]))


@dataclass(eq=False)
class SharedPrefix:
    """One request's shared prefix. ``states`` holds what each worker computed for it (keys and
    values on that worker's device), by worker name: a request's pairs may be scored by several
    workers. A state is set on its worker's thread; all are dropped once the request has no pair
    left to score."""

    tokens: tuple[int, ...]
    states: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

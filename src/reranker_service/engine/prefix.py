"""Shared prompt prefixes: the tokens every pair of a request starts with (the system prompt, the
instruction, the query), computed once per request instead of once per pair.

The reusable part is the longest common prefix of the request's token sequences, so a tokenizer
merge across the ``<Document>: `` boundary can never change a score: only tokens that are equal
in every pair are shared.
"""

from __future__ import annotations

from collections.abc import Sequence


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
prefix's own pass and the masked attention of the pairs after it cost more than they save (see
docs/benchmark.md, the ``long`` workload)."""


def shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens of ``sequences`` are worth computing once for all of them: none
    for fewer than two, where computing it apart would only add a pass, nor where it saves under
    ``MIN_SAVED_SHARE``."""
    if len(sequences) < 2:
        return 0
    length = shared_prefix_length(sequences)
    saved = (len(sequences) - 1) * length
    if not length or saved < MIN_SAVED_SHARE * sum(len(sequence) for sequence in sequences):
        return 0
    return length

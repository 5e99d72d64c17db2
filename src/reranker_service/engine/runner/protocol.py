"""The model-runner boundary: what the scheduler hands a runner, and what it gets back.

Everything that crosses it is plain data. A pass is described by each pair's token ids, the id
and length of the shared prefix the pair starts with, and which prefixes the pass must compute.
The runner keeps what it computes for a prefix (keys and values on its device) until the
scheduler releases that id, apart from any pass, so that a launch that fails cannot lose a
release. It declares how it costs a pass (``pass_tokens``), so that the batch policy and the
metrics count in its units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from reranker_service.engine.prompt import PromptEncoder
from reranker_service.engine.scoring import DeviceMemory, ModelDescription


class BatchTooLargeError(Exception):
    """The runner ran out of device memory on this pass; a smaller one may fit."""


@dataclass(frozen=True, slots=True)
class PassPair:
    """One pair of a pass: its whole token sequence, and the shared prefix it starts with."""

    tokens: Sequence[int]
    prefix_id: int | None = None
    """The request's shared prefix, which the runner holds or computes in this pass; None: the
    pair computes all its tokens."""
    prefix_length: int = 0
    """``tokens[:prefix_length]`` are the prefix's tokens (0 without one)."""

    @property
    def own_tokens(self) -> int:
        """Tokens the pair computes itself, after its prefix."""
        return len(self.tokens) - self.prefix_length


@dataclass(frozen=True)
class PassBatch:
    """What one forward pass is to compute."""

    pairs: Sequence[PassPair]
    new_prefixes: frozenset[int] = frozenset()
    """Prefix ids the runner does not hold yet: the pass computes each once, from the tokens of
    any of its pairs, and keeps it until released."""

    @classmethod
    def of(cls, sequences: Iterable[Sequence[int]]) -> PassBatch:
        """A pass over whole sequences, with no shared prefix."""
        return cls([PassPair(sequence) for sequence in sequences])


@dataclass(frozen=True)
class PassShape:
    """What the batch policy knows of a candidate pass: enough for any runner's geometry."""

    pairs: int
    longest: int
    """The most tokens one pair computes."""
    tokens: int
    """Tokens the pairs compute together after their prefixes, unpadded."""
    prefix_tokens: int = 0
    """Tokens of the shared prefixes the pass computes: each new one for a runner that keeps
    them, each of its requests' for one that does not."""


def padded_pass_tokens(shape: PassShape) -> int:
    """A right-padded pass's geometry: every row as long as the longest, and the new prefixes
    in a pass of their own."""
    return shape.pairs * shape.longest + shape.prefix_tokens


class PendingScores(Protocol):
    def result(self) -> list[float]:
        """Wait for the pass and return its raw scores, in the batch's pair order."""
        ...


@dataclass(frozen=True)
class ReadyScores:
    """The scores of a pass that already ran."""

    scores: list[float]

    def result(self) -> list[float]:
        return self.scores


class ModelRunner(Protocol):
    """Runs forward passes of one model replica on one device. While serving, every call but
    ``memory`` comes from the one worker thread that serves the replica, after it has called
    ``bind_thread``; before that, start-up measurements and warm-ups run passes without
    prefixes from the thread that starts the engine."""

    @property
    def description(self) -> ModelDescription:
        """What the replica serves; ``description.device`` is the worker's name."""
        ...

    @property
    def keeps_prefixes(self) -> bool:
        """Whether a prefix computed in one pass is kept for later ones, until released (then
        only the passes with its id in ``new_prefixes`` compute it), or computed again in every
        pass that has pairs of it (then ``new_prefixes`` is unread and ``release`` does
        nothing)."""
        ...

    @property
    def overlaps_passes(self) -> bool:
        """Whether ``launch`` returns while the device still runs the pass (a GPU): then the
        scheduler prepares and launches the next pass before it waits for this one's scores.
        Where it is False a pass has run by the time ``launch`` returns, and its scores are
        taken at once."""
        ...

    def launch(self, batch: PassBatch) -> PendingScores:
        """Queue the pass and return. Each pair's raw score is logit(yes) - logit(no) of its
        whole sequence, however its prefix was computed. Passes run in launch order: a prefix
        computed by one is readable by the next. Either the whole pass is queued, its new
        prefixes kept, or it raises and keeps none of them; out of device memory it raises
        ``BatchTooLargeError``."""
        ...

    def pass_tokens(self, shape: PassShape) -> int:
        """The tokens a pass of ``shape`` costs this runner: the unit of the batch budget,
        the pass-cost curve and the padding figures."""
        ...

    def release(self, prefix_ids: Sequence[int]) -> None:
        """Drop what is kept for these prefixes, which no pair will read again; ids it does not
        hold are ignored. Called on the worker's thread, before its next launch."""
        ...

    def memory(self) -> DeviceMemory | None:
        """torch's allocator on the served GPU; None when serving on the CPU."""
        ...

    def bind_thread(self) -> None:
        """Make the calling thread, which will run every pass, work on this runner's device."""
        ...


def run_pass(runner: ModelRunner, sequences: Iterable[Sequence[int]]) -> list[float]:
    """The raw scores of ``sequences`` in one pass without shared prefixes, waited for: for
    start-up measurements, warm-ups and reference scores, never beside a serving worker."""
    return runner.launch(PassBatch.of(sequences)).result()


@dataclass(frozen=True)
class ServedModel:
    """A loaded checkpoint: its prompt encoder, and one runner per worker."""

    encoder: PromptEncoder
    runners: tuple[ModelRunner, ...]

    def __post_init__(self) -> None:
        if not self.runners:
            raise ValueError("a served model needs at least one runner")

    @property
    def runner(self) -> ModelRunner:
        """The first worker's runner: the one of a single-device model."""
        return self.runners[0]

    @property
    def description(self) -> ModelDescription:
        return self.runner.description

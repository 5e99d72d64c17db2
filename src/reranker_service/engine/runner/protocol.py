"""The model-runner boundary: what the scheduler hands a runner, and what it gets back.

Everything that crosses it is plain data. A pass is described by each pair's token ids, the id
and length of the shared prefix the pair starts with, and which prefixes the pass must compute.
The runner keeps what it computes for a prefix (keys and values on its device) until the
scheduler releases that id, apart from any pass, so that a launch that fails cannot lose a
release. It declares how it costs a pass (``pass_tokens``), so that the batch policy and the
metrics count in its units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from reranker_service.engine.pairs import PairEncoder
from reranker_service.engine.scoring import DeviceMemory, ModelDescription


class BatchTooLargeError(Exception):
    """The runner ran out of device memory on this pass; a smaller one may fit."""


class DeviceLostError(Exception):
    """The runner's device failed in a way no later pass recovers from (a sticky CUDA error:
    an illegal memory access, a device-side assert, an ECC error): only a new process serves
    on it again. The message names the device and the error's first line."""


@dataclass(frozen=True)
class RunnerKind:
    """What a runner is, as ``/info`` and ``reranker_runner_info`` show it."""

    name: str
    """``padded`` or ``packed``."""
    compiled: bool = False
    cuda_graphs: bool = False
    """Whether some of its passes replay CUDA graphs."""


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
    def kind(self) -> RunnerKind:
        """What it is: its name, whether it is compiled, whether it replays graphs."""
        ...

    @property
    def reads_prefixes(self) -> bool:
        """Whether a pair may start with a shared prefix computed apart from its own tokens:
        true of a causal decoder, whose tokens never see the ones after them; false of an
        encoder, whose every token sees every other. A runner that does not is given no
        prefixes (every ``PassPair.prefix_id`` None)."""
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
        ``BatchTooLargeError``, and on a device that serves nothing more (there, or from the
        scores' ``result``) ``DeviceLostError``."""
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


@dataclass(frozen=True)
class CompileSummary:
    """What compiling a runner's buckets took."""

    bucket_seconds: tuple[tuple[int, float], ...]
    """``(tokens, seconds)`` per bucket compiled, smallest first."""
    cache_hits: int
    """Graphs the compiler found in its cache (the compile-cache folder, or memory)."""
    cache_misses: int
    """Graphs it compiled."""

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds in self.bucket_seconds)


class CompilableRunner(ModelRunner, Protocol):
    """A runner that is compiled, and captures CUDA graphs, before it serves."""

    @property
    def buckets_to_capture(self) -> tuple[int, ...]:
        """Pass sizes replayed from CUDA graphs once captured (none on the CPU)."""
        ...

    def compile_buckets(self, should_stop: Callable[[], bool]) -> CompileSummary:
        """Compile every bucket (from any thread), stopping early when ``should_stop`` says
        so."""
        ...

    def capture(self, tokens: int) -> float:
        """Capture the bucket's pass as a graph, from the thread that will serve the runner,
        with none of its passes in flight; the seconds it took."""
        ...

    def close(self) -> None:
        """Let go of its graphs and device memory: it will not serve."""
        ...


class RunnerUpgrade(Protocol):
    """How one worker's compiled runner is made and proven, to take over from the eager one it
    became ready on."""

    @property
    def foreground(self) -> bool:
        """Whether the replica waits for it before it is ready (``RERANKER_COMPILE=true``: a
        failure stops start-up) rather than serving meanwhile (``background``: a failure keeps
        the eager runner)."""
        ...

    @property
    def probe(self) -> Sequence[PassBatch]:
        """The self-check's passes."""
        ...

    @property
    def score_bound(self) -> float:
        """How far from the eager runner's a compiled runner's score may be."""
        ...

    def build(self) -> CompilableRunner:
        """The compiled runner, not compiled yet."""
        ...

    def reference(self) -> ModelRunner:
        """An eager runner on the same weights that holds nothing: the self-check's reference,
        usable from a thread other than the serving one."""
        ...


def run_pass(runner: ModelRunner, sequences: Iterable[Sequence[int]]) -> list[float]:
    """The raw scores of ``sequences`` in one pass without shared prefixes, waited for: for
    start-up measurements, warm-ups and reference scores, never beside a serving worker."""
    return runner.launch(PassBatch.of(sequences)).result()


@dataclass(frozen=True)
class ServedModel:
    """A loaded checkpoint: its pair encoder, one runner per worker, and for each worker the
    compiled runner that is to take over from it, if any."""

    encoder: PairEncoder
    runners: tuple[ModelRunner, ...]
    upgrades: tuple[RunnerUpgrade | None, ...] = ()
    """Aligned with ``runners``; empty: none."""

    def __post_init__(self) -> None:
        if not self.runners:
            raise ValueError("a served model needs at least one runner")
        if self.upgrades and len(self.upgrades) != len(self.runners):
            raise ValueError("one upgrade (or None) per runner")

    def upgrade_of(self, index: int) -> RunnerUpgrade | None:
        return self.upgrades[index] if self.upgrades else None

    @property
    def runner(self) -> ModelRunner:
        """The first worker's runner: the one of a single-device model."""
        return self.runners[0]

    @property
    def description(self) -> ModelDescription:
        return self.runner.description

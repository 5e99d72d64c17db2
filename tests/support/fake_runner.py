"""A model runner in pure Python, for testing the scheduler and the engine without torch.

A pair's raw score is a deterministic function of its whole token sequence (``fake_logit``),
whatever shared prefix it starts with; the runner holds a prefix's tokens where a real one holds
keys and values, and keeps the runner contract strictly: a pair may only start with a prefix it
holds or computes in the same pass, a released prefix is gone, and a pass that raises keeps
none of its new prefixes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from reranker_service.engine.runner.protocol import (
    BatchTooLargeError,
    PassBatch,
    PassShape,
    RunnerKind,
    padded_pass_tokens,
)
from reranker_service.engine.scoring import DeviceMemory, ModelDescription

_MODULUS = 2_147_483_647


@dataclass(frozen=True)
class ReadyScores:
    """The scores of a pass that already ran: what a runner without a device hands back."""

    scores: list[float]

    def result(self) -> list[float]:
        return self.scores


def fake_logit(tokens: Sequence[int]) -> float:
    """A raw score in [-4, 4) that depends on every token and its position."""
    value = 0
    for token in tokens:
        value = (value * 1_000_003 + token + 1) % _MODULUS
    return value / _MODULUS * 8 - 4


def fake_description(name: str = "cpu") -> ModelDescription:
    return ModelDescription(
        model="fake",
        revision="fake",
        device=name,
        dtype="float32",
        max_length=8192,
        load_seconds=0.0,
    )


class _Deferred:
    """Scores taken only when the scheduler asks, logged: the order an asynchronous device
    would see."""

    def __init__(self, scores: list[float], events: list[tuple[str, int]], index: int) -> None:
        self._scores, self._events, self._index = scores, events, index

    def result(self) -> list[float]:
        self._events.append(("result", self._index))
        return self._scores


class FakeRunner:
    def __init__(
        self,
        name: str = "cpu",
        *,
        overlaps: bool = False,
        pass_tokens: Callable[[PassShape], int] = padded_pass_tokens,
        capacity: int | None = None,
        fail_on_length: int | None = None,
        keeps_prefixes: bool = True,
    ) -> None:
        """``capacity``: a pass costing more tokens fails as out of memory. ``fail_on_length``:
        a pass holding a pair of that many tokens fails with a plain error. Without
        ``keeps_prefixes`` it packs, as the packed runner: every pass computes each prefix its
        pairs start with, and keeps none."""
        self.keeps_prefixes = keeps_prefixes
        self.reads_prefixes = True
        self._description = fake_description(name)
        self._overlaps = overlaps
        self._pass_tokens = pass_tokens
        self._capacity = capacity
        self._fail_on_length = fail_on_length
        self.prefixes: dict[int, tuple[int, ...]] = {}
        self.batches: list[PassBatch] = []
        """Every pass launched, the failed ones included."""
        self.released: list[int] = []
        self.events: list[tuple[str, int]] = []
        self._released = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[int] = set()

    @property
    def description(self) -> ModelDescription:
        return self._description

    @property
    def kind(self) -> RunnerKind:
        return RunnerKind("fake")

    @property
    def overlaps_passes(self) -> bool:
        return self._overlaps

    def pass_tokens(self, shape: PassShape) -> int:
        return self._pass_tokens(shape)

    def release(self, prefix_ids: Sequence[int]) -> None:
        with self._released:
            for prefix_id in prefix_ids:
                self.prefixes.pop(prefix_id, None)
                self.released.append(prefix_id)
            self._released.notify_all()

    def wait_released(self, prefix_ids: Iterable[int], timeout: float = 10) -> bool:
        """Wait (bounded) until every one of ``prefix_ids`` has been released."""
        wanted = set(prefix_ids)
        with self._released:
            return self._released.wait_for(lambda: wanted <= set(self.released), timeout)

    def memory(self) -> DeviceMemory | None:
        return None

    def bind_thread(self) -> None:
        self.threads.add(threading.get_ident())

    @property
    def lengths(self) -> list[list[int]]:
        """Each pass's pair lengths."""
        return [[len(pair.tokens) for pair in batch.pairs] for batch in self.batches]

    def launch(self, batch: PassBatch) -> ReadyScores | _Deferred:
        self.gate.wait(timeout=60)
        self.threads.add(threading.get_ident())
        self.batches.append(batch)
        computed: dict[int, tuple[int, ...]] = {}
        for pair in batch.pairs:
            if pair.prefix_id is None:
                continue
            prefix = tuple(pair.tokens[: pair.prefix_length])
            if pair.prefix_id in batch.new_prefixes or not self.keeps_prefixes:
                known = computed.setdefault(pair.prefix_id, prefix)
            elif pair.prefix_id in self.prefixes:
                known = self.prefixes[pair.prefix_id]
            else:
                raise AssertionError(f"prefix {pair.prefix_id} is neither held nor new")
            assert known == prefix, "a pair does not start with its prefix's tokens"
        own = [pair.own_tokens for pair in batch.pairs]
        prefix_tokens = sum(len(prefix) for prefix in computed.values())
        cost = self._pass_tokens(PassShape(len(own), max(own), sum(own), prefix_tokens))
        if self._capacity is not None and cost > self._capacity:
            raise BatchTooLargeError(f"out of memory: {cost} tokens")
        if self._fail_on_length in {len(pair.tokens) for pair in batch.pairs}:
            raise RuntimeError("injected forward failure")
        if self.keeps_prefixes:
            self.prefixes.update(computed)
        scores = [fake_logit(pair.tokens) for pair in batch.pairs]
        if not self._overlaps:
            return ReadyScores(scores)
        index = sum(1 for event, _ in self.events if event == "launch")
        self.events.append(("launch", index))
        return _Deferred(scores, self.events, index)

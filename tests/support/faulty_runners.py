"""The real model behind fault seams that a request sets off with a word in a document: a
pass holding such a pair overflows (its score comes out NaN) or is slow. Tests in process wrap
a served model with them; ``tests/support/drill_service.py`` serves a whole process through them."""

from __future__ import annotations

import math
import time

from reranker_service.engine.pairs import PairEncoder
from reranker_service.engine.runner.protocol import (
    PassBatch,
    PendingScores,
    ServedModel,
)
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.fake_runner import ReadyScores
from tests.support.serving import RunnerWrapper, sequences_of

OVERFLOW_WORD = "overflowing"
SLOW_WORD = "sluggish"


def word_token(encoder: PairEncoder, word: str) -> int:
    """A token that a document holding ``word`` has and a plain one has not."""
    marked, plain = encoder.encode(DEFAULT_INSTRUCTION, "q", [word, "fine"])
    return next(token for token in marked if token not in plain)


class OverflowsOnAWord(RunnerWrapper):
    """The real model, except that a pair whose document has ``OVERFLOW_WORD`` overflows: its
    score comes out NaN, as the model reports an fp16 pass whose logit is not finite."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__(model)
        self.poison = word_token(model.encoder, OVERFLOW_WORD)
        self.batch_sizes: list[int] = []

    def launch(self, batch: PassBatch) -> PendingScores:
        self.batch_sizes.append(len(batch.pairs))
        scores = super().launch(batch).result()
        return ReadyScores(
            [
                math.nan if self.poison in sequence else score
                for sequence, score in zip(sequences_of(batch), scores, strict=True)
            ]
        )


class SlowOnAWord(RunnerWrapper):
    """The real model, except that a pass holding a pair whose document has ``SLOW_WORD``
    takes ``pass_seconds`` longer, as a long pass on a busy device does."""

    def __init__(self, model: ServedModel, pass_seconds: float) -> None:
        super().__init__(model)
        self.slow = word_token(model.encoder, SLOW_WORD)
        self.pass_seconds = pass_seconds

    def launch(self, batch: PassBatch) -> PendingScores:
        if any(self.slow in sequence for sequence in sequences_of(batch)):
            time.sleep(self.pass_seconds)  # stands in for the device's time
        return super().launch(batch)

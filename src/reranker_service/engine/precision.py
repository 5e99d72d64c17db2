"""The number format a CPU serves in.

``auto`` is bf16 where the CPU computes it natively (Intel AMX, AVX512-BF16 on Intel Cooper
Lake and AMD Zen 4 and later, Arm's BF16 extension) and a start-up self-check finds its scores
close enough to fp32's; otherwise fp32, which a CPU without those instructions runs faster than
bf16 anyway.

The choice is made from the CPU's flags and the self-check's scores, here, never from a
timed pass (two noisy cores time the same pass differently on every start); loading the
weights and converting them is the model loader's.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reranker_service.engine.scoring import DtypeChoice, probability

BF16_SELF_CHECK_BOUND = 0.02
"""Largest |P(yes) in bf16 - P(yes) in fp32| over the self-check's pairs for ``auto`` to keep
bf16. bf16 keeps 8 significant bits, so each rounding errs by up to 2^-9 (0.2 %), and a forward
pass accumulates thousands of them: on the 0.6B shape the largest difference measured over
longer pairs was 0.0087 (``bench/bf16_drift.py``), at scores near 0.5 where the sigmoid is
steepest (a trained model's scores mostly sit near 0 or 1, where the same logit error moves them
less). A bf16 path that is wrong rather than rounded (a kernel bug, activations overflowing the
format) is off by tenths. 0.02 keeps the first and refuses the second; it is the bound the docs
state for bf16 scores on a GPU as well."""

NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
"""CPU feature flags (Linux ``/proc/cpuinfo``) of instructions computing bf16: x86's AMX and
AVX512-BF16, Arm's BF16 (``Features: ... bf16``)."""

_CHECK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_CHECK_QUERY = "how do plants turn sunlight into chemical energy"
_CHECK_DOCUMENTS = (
    "plants",
    "The stock market closed higher on Tuesday after a volatile session.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Chlorophyll absorbs blue and red light; the energy splits water, releasing oxygen and "
    "producing ATP and NADPH for the Calvin cycle, which fixes carbon dioxide into sugars.",
)
"""Pairs of unlike lengths (a word to a few lines; about 75 to 120 tokens with the prompt) and
relevance, scored at start-up: one fp32 pass over them takes about 2 s for the 0.6B model on
two cores."""


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags a ``/proc/cpuinfo`` text lists (``flags`` on x86, ``Features`` on
    Arm), of its first processor."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This machine's CPU flags; none where the file does not exist (not Linux)."""
    try:
        return cpu_flags(path.read_text())
    except OSError:
        return frozenset()


def cpu_computes_bf16(flags: frozenset[str]) -> bool:
    return bool(flags & NATIVE_BF16_FLAGS)


def check_pairs(encode: Callable[[str, str, Sequence[str]], list[list[int]]]) -> list[list[int]]:
    """The self-check's token sequences, through the served prompt encoder."""
    return encode(_CHECK_INSTRUCTION, _CHECK_QUERY, _CHECK_DOCUMENTS)


@dataclass(frozen=True)
class TimedScores:
    logits: list[float]
    seconds: float
    """The pass's time, after a warm-up pass that paid for setting up kernels and caches."""


def timed_scores(
    score: Callable[[list[list[int]]], list[float]], pairs: list[list[int]]
) -> TimedScores:
    """Score ``pairs`` in one pass, timed, after a pass over the shortest alone that sets up
    kernels and caches."""
    score([min(pairs, key=len)])
    started = time.perf_counter()
    logits = score(pairs)
    return TimedScores(logits, time.perf_counter() - started)


@dataclass(frozen=True)
class PrecisionCheck:
    """A number format's scores against fp32's on the self-check's pairs."""

    max_difference: float
    """Largest |P(yes) - P(yes) in fp32|."""
    median_difference: float
    speedup: float
    """fp32's pass time over this format's."""

    @classmethod
    def of(cls, reference: TimedScores, candidate: TimedScores) -> PrecisionCheck:
        differences = [
            abs(probability(a) - probability(b))
            for a, b in zip(reference.logits, candidate.logits, strict=True)
        ]
        finite = all(math.isfinite(logit) for logit in candidate.logits)
        return cls(
            max_difference=max(differences) if finite else math.inf,
            median_difference=statistics.median(differences) if finite else math.inf,
            speedup=reference.seconds / candidate.seconds,
        )

    def fields(self, prefix: str) -> dict[str, float]:
        """For a log line: ``<prefix>_max_difference`` and the rest, rounded."""
        return {
            f"{prefix}_max_difference": float(f"{self.max_difference:.3g}"),
            f"{prefix}_median_difference": float(f"{self.median_difference:.3g}"),
            f"{prefix}_speedup": round(self.speedup, 2),
        }


@dataclass(frozen=True)
class CpuDtypeChoice:
    dtype: str
    """``float32`` or ``bfloat16``."""
    reason: str
    flags: frozenset[str]
    """The CPU's flags that compute bf16 natively, as seen."""
    check: PrecisionCheck | None
    """The self-check's measurement, where one ran."""

    def described(self) -> DtypeChoice:
        """What ``/info`` says of it."""
        return DtypeChoice(
            reason=self.reason,
            cpu_flags=tuple(sorted(self.flags)),
            self_check_max_difference=self.check.max_difference if self.check else None,
        )


def native_flags(flags: frozenset[str]) -> frozenset[str]:
    """Of a CPU's flags, those of instructions computing bf16."""
    return flags & NATIVE_BF16_FLAGS


def choose_auto_cpu_dtype(
    flags: frozenset[str],
    run_check: Callable[[], PrecisionCheck],
    bound: float | None = None,
) -> CpuDtypeChoice:
    """``auto`` on a CPU: bf16 where the CPU computes it (``flags``) and ``run_check`` (bf16
    against fp32) finds it within ``bound`` (``BF16_SELF_CHECK_BOUND`` unless given); else
    fp32. Nothing timed decides: on one machine and checkpoint every start chooses alike (the
    check's scores are deterministic, and a CPU that computes bf16 natively runs it faster than
    fp32 on any model worth serving, however a timed pass on a busy machine comes out)."""
    if bound is None:
        bound = BF16_SELF_CHECK_BOUND
    seen = native_flags(flags)
    if not cpu_computes_bf16(flags):
        return CpuDtypeChoice("float32", "this CPU has no bf16 instructions", seen, None)
    check = run_check()
    if not check.max_difference <= bound:
        reason = f"bf16 scores differ from fp32 by {check.max_difference:.3g} > {bound}"
        return CpuDtypeChoice("float32", reason, seen, check)
    named = ", ".join(sorted(seen))
    reason = f"this CPU computes bf16 ({named}), within the self-check's bound"
    return CpuDtypeChoice("bfloat16", reason, seen, check)

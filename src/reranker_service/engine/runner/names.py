"""The runners' names, without torch: what ``RERANKER_RUNNER`` may say, so that the settings
validate against the names the runner registry (``build.RUNNER_FACTORIES``) builds, and a bad
one stops start-up before any model loads. A new runner's name goes here, its factory there;
the registry refuses to import if the two disagree."""

from __future__ import annotations

from typing import Final, Literal, TypeGuard, get_args

RunnerName = Literal["padded", "packed"]
"""A runner the registry builds."""

RunnerChoice = Literal["auto", RunnerName]
"""``RERANKER_RUNNER``: a runner by name, or ``auto`` (the engine's choice per device)."""

RUNNER_NAMES: Final[tuple[RunnerName, ...]] = get_args(RunnerName)

EAGER_RUNNER: Final[RunnerName] = "padded"
"""Needs no compiler: what a replica is ready on while its compiled runner is made, and what
``auto`` serves where nothing is compiled."""

COMPILED_RUNNER: Final[RunnerName] = "packed"
"""What ``RERANKER_COMPILE`` compiles and swaps in."""


def is_runner_name(value: str) -> TypeGuard[RunnerName]:
    return value in RUNNER_NAMES

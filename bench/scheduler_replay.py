"""Did a scheduler change change what it decides? Replay the same submissions through two trees'
``Batcher`` and compare every pass, report and result.

    python bench/scheduler_replay.py --base ../main-before

Each tree runs this file with its own ``src/`` (and its fake runner, ``tests/support/``) first on
the path, the clock replaced by a counter of ticks, so that timing is the same in both: seven
scenarios (padded and packed runners, prefix reuse, overlapping passes, a pass out of memory
split in halves, priorities with aging, a tight prefix budget) of 40 requests each. It prints
whether the two trees decided alike, scenario by scenario, and exits 1 if not. Where
``compare_trees.py`` measures speed, with the noise of a shared machine, this compares the
decisions exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
REQUESTS = 40
TICK_SECONDS = 1 / 1024
PASS_COSTS = [(64, 0.002), (128, 0.0025), (1024, 0.01)]
TIMED_REQUESTS = 2000

SCENARIOS: dict[str, dict[str, Any]] = {
    "padded": {"runner": {}, "prefix_tokens": 0, "batch_tokens": 2048},
    "padded, prefix reuse": {"runner": {}, "prefix_tokens": 100_000, "batch_tokens": 1024},
    "packed, prefixes in every pass": {
        "runner": {"keeps_prefixes": False, "packed": True},
        "prefix_tokens": 1,
        "batch_tokens": 600,
    },
    "overlapping passes": {
        "runner": {"overlaps": True},
        "prefix_tokens": 100_000,
        "batch_tokens": 512,
    },
    "out of memory, halved": {
        "runner": {"capacity": 300},
        "prefix_tokens": 100_000,
        "batch_tokens": 2048,
    },
    "priorities with aging": {
        "runner": {},
        "prefix_tokens": 100_000,
        "batch_tokens": 400,
        "max_wait_seconds": 0.02,
    },
    "tight prefix budget": {"runner": {}, "prefix_tokens": 150, "batch_tokens": 300},
}


def _pairs(request: int, lengths: list[int]) -> list[list[int]]:
    """A request's pairs: a shared 32-token prefix, then each document's own tokens."""
    prefix = [*range(100, 130), 1000 + request, 2000 + request]
    return [
        [*prefix, *range(3000 + index, 3000 + index + length), 7, 8, 9]
        for index, length in enumerate(lengths)
    ]


def _requests(seed: int) -> list[list[list[int]]]:
    """Requests of 1 to 6 documents of 1 to 90 tokens, varied by ``seed``."""
    requests = []
    for request in range(REQUESTS):
        documents = range(1 + (request + seed) % 6)
        lengths = [1 + (request * 7 + document * 13 + seed) % 90 for document in documents]
        requests.append(_pairs(request, lengths))
    return requests


def _fake_runner(**options: Any) -> Any:
    """The tree's fake runner, wherever that tree keeps it."""
    try:
        from tests.support.fake_runner import FakeRunner
    except ImportError:  # a tree from before tests/support/
        from tests.fake_runner import FakeRunner  # type: ignore[no-redef]
    return FakeRunner(**options)


async def _scenario(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Imported here: the clock is replaced before the scheduler reads it."""
    from reranker_service.engine.prefix import shared_prefix
    from reranker_service.engine.scheduler.batcher import Batcher
    from reranker_service.engine.scheduler.pass_cost import PassCostModel

    runner_options = dict(spec["runner"])
    if runner_options.pop("packed", False):
        runner_options["pass_tokens"] = lambda shape: shape.tokens + shape.prefix_tokens
    runner = _fake_runner(**runner_options)
    reports: list[Any] = []
    batcher = Batcher(
        [runner],
        max_batch_tokens=spec["batch_tokens"],
        max_queued_pairs=10_000,
        pass_costs=PassCostModel(PASS_COSTS),
        max_prefix_tokens=spec["prefix_tokens"],
        observer=reports.append,
        priority_max_wait_seconds=spec.get("max_wait_seconds", math.inf),
    )
    jobs = [
        batcher.submit(pairs, shared_prefix(pairs), priority=index % 5 - 2)
        for index, pairs in enumerate(_requests(len(name)))
    ]
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
    await batcher.stop()
    prefix_numbers: dict[int, int] = {}

    def prefix(prefix_id: int | None) -> int | None:
        """Prefix ids in the order first seen: ids are unique in a process, not in a replay."""
        return (
            None if prefix_id is None else prefix_numbers.setdefault(prefix_id, len(prefix_numbers))
        )

    return {
        "passes": [
            [[len(pair.tokens), prefix(pair.prefix_id), pair.prefix_length] for pair in batch.pairs]
            + [sorted(prefix(new) for new in batch.new_prefixes)]  # type: ignore[misc]
            for batch in runner.batches
        ],
        "reports": [
            [
                report.pairs,
                report.real_tokens,
                report.padded_tokens,
                report.reused_tokens,
                report.queue_wait_seconds,
                report.inference_seconds,
                report.failed,
                report.queue_wait_priorities,
            ]
            for report in reports
        ],
        "results": [
            repr(result)
            if isinstance(result, BaseException)
            else [
                result.scores,
                result.queue_seconds,
                result.inference_seconds,
                [
                    (
                        share.started_at - result.submitted_at,
                        share.seconds,
                        share.pairs,
                        share.batch_pairs,
                        share.reused_tokens,
                    )
                    for share in result.passes
                ],
            ]
            for result in results
        ],
        "released": len(runner.released),
        "held_after": batcher.prefix_tokens_held,
    }


def _replay() -> None:
    """In a tree: every scenario's decisions as JSON on stdout."""
    ticks = itertools.count()
    time.perf_counter = lambda: next(ticks) * TICK_SECONDS
    decided = {name: asyncio.run(_scenario(name, spec)) for name, spec in SCENARIOS.items()}
    print(json.dumps(decided, sort_keys=True))


async def _host_seconds_per_pass(requests: int) -> tuple[float, int]:
    """The scheduler's own time per pass, on the real clock: ``requests`` requests of eight
    pairs through one worker whose runner costs nothing (the fake one), end to end."""
    from reranker_service.engine.prefix import shared_prefix
    from reranker_service.engine.scheduler.batcher import Batcher
    from reranker_service.engine.scheduler.pass_cost import PassCostModel

    runner = _fake_runner()
    batcher = Batcher(
        [runner],
        max_batch_tokens=1024,
        max_queued_pairs=10**6,
        pass_costs=PassCostModel(PASS_COSTS),
        max_prefix_tokens=100_000,
    )
    batcher.start()
    all_pairs = [_pairs(request, [1 + (request * 7 + doc * 13) % 90 for doc in range(8)])
                 for request in range(requests)]  # fmt: skip
    started = time.perf_counter()
    jobs = [batcher.submit(pairs, shared_prefix(pairs)) for pairs in all_pairs]
    await asyncio.gather(*(job.future for job in jobs))
    seconds = time.perf_counter() - started
    await batcher.stop()
    return seconds / len(runner.batches), len(runner.batches)


def _timing() -> None:
    """In a tree: the best of three runs of ``_host_seconds_per_pass``, as JSON on stdout."""
    runs = [asyncio.run(_host_seconds_per_pass(TIMED_REQUESTS)) for _ in range(3)]
    seconds, passes = min(runs)
    print(json.dumps({"seconds_per_pass": seconds, "passes": passes}))


def _in_tree(tree: Path, mode: str) -> dict[str, Any]:
    environment = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{tree}")
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), mode],
        env=environment,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    # The last line: the scheduler's log lines come before it.
    answer: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, help="the tree to compare this one with")
    parser.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        _replay()
        return
    if args.timing:
        _timing()
        return
    if args.base is None:
        parser.error("--base is required")
    base_tree = args.base.resolve()
    base, this = _in_tree(base_tree, "--replay"), _in_tree(HERE, "--replay")
    print("| scenario | passes | reports | results | the same |")
    print("|---|---:|---:|---:|---|")
    for name in SCENARIOS:
        same = base[name] == this[name]
        print(
            f"| {name} | {len(this[name]['passes'])} | {len(this[name]['reports'])} "
            f"| {len(this[name]['results'])} | {'yes' if same else 'NO'} |"
        )
    # The host's time per pass, trees alternating, the best of each: what the scheduler's own
    # Python costs, which decisions alone do not show.
    timings: dict[str, list[float]] = {"base": [], "this": []}
    for _ in range(2):
        for name, tree in (("base", base_tree), ("this", HERE)):
            timings[name].append(_in_tree(tree, "--timing")["seconds_per_pass"])
    base_us, this_us = (min(timings[name]) * 1e6 for name in ("base", "this"))
    print(
        f"\nscheduler's host time per pass ({TIMED_REQUESTS} requests of 8 pairs, a runner that "
        f"costs nothing): base {base_us:.0f} us, this {this_us:.0f} us, "
        f"ratio {this_us / base_us:.2f}"
    )
    if base != this:
        raise SystemExit("the trees decided differently")


if __name__ == "__main__":
    main()

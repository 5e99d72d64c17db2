"""The compiled runner taking over from the eager one a replica became ready on.

For each worker with a ``RunnerUpgrade``, in stages, each of which may fail:

1. ``build`` and ``compile``: the compiled runner, every bucket compiled (any thread);
2. ``capture``: its small buckets captured as CUDA graphs, one at a time on the worker's own
   thread between two of its passes (so that no pass of the eager runner runs on the device
   during a capture);
3. ``self_check``: the probe's passes scored by it and by an eager runner on the same weights,
   every score within the number format's bound;
4. ``pass_costs``: the batch policy's pass-cost ladder measured on it;
5. ``swap``: installed on the worker at a pass boundary.

In the background (``RERANKER_COMPILE=background``) this runs on a thread of its own while the
eager runner serves, and a failure at any stage leaves the eager runner serving, logged as
``runner_fallback`` and shown by ``statuses``. In the foreground (``true``) it runs before the
workers start, and a failure stops start-up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog

from reranker_service.engine.runner.protocol import (
    CompilableRunner,
    CompileSummary,
    ModelRunner,
    RunnerKind,
    RunnerUpgrade,
)
from reranker_service.engine.runner.self_check import self_check
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.pass_cost import measure_pass_costs

logger = structlog.get_logger(__name__)

CompileState = Literal["off", "compiling", "compiled", "fallback"]
COMPILE_STATES: tuple[CompileState, ...] = ("off", "compiling", "compiled", "fallback")
Stage = Literal["build", "compile", "capture", "self_check", "pass_costs", "swap"]

PASS_COST_BUDGET_SECONDS = 6.0
"""As the engine's start-up measurement."""

STOP_WAIT_SECONDS = 10.0
"""How long stopping waits for the background work to reach its next step. One bucket's
compile cannot be interrupted and may take longer; shutdown (within the orchestrator's grace
period) does not wait for it: the thread is a daemon, and ends with the process."""


@dataclass(frozen=True)
class CompileStatus:
    """Where a worker's compiled runner stands."""

    state: CompileState
    """``off``: none is planned; ``compiling``: on its way (the eager runner serves);
    ``compiled``: serving; ``fallback``: it failed, and the eager runner serves on."""
    seconds: float | None = None
    """From the start of compiling to the swap, or to the failure."""
    stage: Stage | None = None
    """Where it failed (``fallback``), or where it is (``compiling``)."""
    reason: str | None = None
    """The first line of the error (``fallback``)."""


@dataclass(frozen=True)
class RunnerStatus:
    """One worker's runner as the operator sees it."""

    device: str
    runner: RunnerKind
    compile: CompileStatus


RunnerObserver = Callable[[RunnerStatus], None]
"""Told every change of a worker's runner or compile state, from the thread that made it."""


class UpgradeFailedError(Exception):
    """A compiled runner did not take over (foreground: start-up stops with it)."""

    def __init__(self, device: str, stage: Stage, reason: str) -> None:
        super().__init__(f"compiling the packed runner on {device} failed at {stage}: {reason}")
        self.device = device
        self.stage = stage
        self.reason = reason


class _CancelledError(Exception):
    """The engine is stopping: the background work ends at its next step."""


class RunnerUpgrader:
    """Brings each worker's compiled runner in, one worker after another."""

    def __init__(
        self,
        batcher: Batcher,
        upgrades: Sequence[tuple[str, RunnerUpgrade]],
        *,
        pass_cost_token_ids: Sequence[int],
        max_batch_tokens: int,
        pinned_pass_costs: Sequence[tuple[float, float]] | None = None,
        observer: RunnerObserver | None = None,
    ) -> None:
        self._batcher = batcher
        self._upgrades = list(upgrades)
        self._token_ids = list(pass_cost_token_ids)
        self._max_batch_tokens = max_batch_tokens
        self._pinned_pass_costs = pinned_pass_costs
        self.observer = observer
        self._statuses: dict[str, CompileStatus] = {
            name: CompileStatus("off") for name in batcher.worker_names
        }
        for name, _ in self._upgrades:
            self._statuses[name] = CompileStatus("compiling", stage="build")
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def planned(self) -> bool:
        return bool(self._upgrades)

    @property
    def foreground(self) -> bool:
        return any(upgrade.foreground for _, upgrade in self._upgrades)

    def statuses(self) -> list[RunnerStatus]:
        """Each worker's runner now, and its compile state."""
        return [
            RunnerStatus(name, self._batcher.runner_of(name).kind, self._statuses[name])
            for name in self._batcher.worker_names
        ]

    def run_foreground(self) -> None:
        """Compile, prove and install every worker's runner, before the workers serve;
        raises ``UpgradeFailedError`` at the first failure."""
        for name, upgrade in self._upgrades:
            if not self._upgrade(name, upgrade):
                status = self._statuses[name]
                raise UpgradeFailedError(name, status.stage or "build", status.reason or "")

    def start_background(self) -> None:
        """Bring the compiled runners in on a thread of this one's, while the workers serve."""
        self._thread = threading.Thread(
            target=self._run_background, name="reranker-compile", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background thread to end (bounded); whether it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = STOP_WAIT_SECONDS) -> None:
        """Ask the background work to end at its next step, and wait for it, ``timeout``
        seconds at most."""
        self._cancelled.set()
        if not self.wait(timeout):
            logger.warning("runner_compile_abandoned", waited_seconds=timeout)

    def _run_background(self) -> None:
        for name, upgrade in self._upgrades:
            if self._cancelled.is_set():
                return
            try:
                self._upgrade(name, upgrade)
            except Exception:  # a bug here must not take the serving replica down
                logger.exception("runner_upgrade_failed", device=name)

    def _upgrade(self, name: str, upgrade: RunnerUpgrade) -> bool:
        """One worker's compiled runner, stage by stage; whether it took over."""
        started = time.perf_counter()
        stage: Stage = "build"
        runner: CompilableRunner | None = None

        def enter(next_stage: Stage) -> None:
            nonlocal stage
            if self._cancelled.is_set():
                raise _CancelledError
            stage = next_stage
            self._set(name, CompileStatus("compiling", stage=stage))

        try:
            enter("build")
            runner = upgrade.build()
            runner.bind_thread()  # this thread's passes (self-check, pass costs) on its device
            enter("compile")
            summary = runner.compile_buckets(self._cancelled.is_set)
            for tokens in runner.buckets_to_capture:
                enter("capture")
                self._batcher.run_on_worker(name, _capture(runner, tokens)).result()
            enter("self_check")
            checked = self_check(runner, upgrade.reference(), upgrade.probe, upgrade.score_bound)
            enter("pass_costs")
            costs = self._pass_costs(runner)
            enter("swap")
            self._batcher.install_runner(name, runner, costs).result()
        except Exception as exc:
            if runner is not None:
                runner.close()
            if self._cancelled.is_set():  # stopping: whatever failed, it failed because of that
                self._set(name, CompileStatus("off"))
                logger.info("runner_compile_cancelled", device=name, stage=stage)
                return False
            seconds = time.perf_counter() - started
            reason = _first_line(exc)
            self._set(name, CompileStatus("fallback", seconds, stage, reason))
            logger.warning(
                "runner_fallback",
                device=name,
                stage=stage,
                error=reason,
                error_type=type(exc).__name__,
                seconds=round(seconds, 3),
                serving=self._batcher.runner_of(name).kind.name,
                foreground=upgrade.foreground,
            )
            return False
        seconds = time.perf_counter() - started
        self._set(name, CompileStatus("compiled", seconds))
        self._log_compiled(name, runner, summary, seconds, checked.max_difference)
        return True

    def _pass_costs(self, runner: ModelRunner) -> Sequence[tuple[float, float]]:
        if self._pinned_pass_costs is not None:
            return self._pinned_pass_costs
        measured = measure_pass_costs(
            runner, self._token_ids, self._max_batch_tokens, PASS_COST_BUDGET_SECONDS
        )
        return measured.points

    def _set(self, name: str, status: CompileStatus) -> None:
        self._statuses[name] = status
        observer = self.observer
        if observer is None:
            return
        try:
            observer(RunnerStatus(name, self._batcher.runner_of(name).kind, status))
        except Exception:
            logger.exception("runner_observer_failed")

    def _log_compiled(
        self,
        name: str,
        runner: CompilableRunner,
        summary: CompileSummary,
        seconds: float,
        self_check_difference: float,
    ) -> None:
        kind = runner.kind
        logger.info(
            "runner_compiled",
            device=name,
            seconds=round(seconds, 3),
            compile_seconds=round(summary.seconds, 3),
            buckets=[tokens for tokens, _ in summary.bucket_seconds],
            cuda_graph_buckets=list(runner.buckets_to_capture) if kind.cuda_graphs else [],
            compile_cache_hits=summary.cache_hits,
            compile_cache_misses=summary.cache_misses,
            self_check_max_difference=float(f"{self_check_difference:.3g}"),
        )
        logger.info(
            "runner_swapped",
            device=name,
            runner=kind.name,
            compiled=kind.compiled,
            cuda_graphs=kind.cuda_graphs,
        )


def _capture(runner: CompilableRunner, tokens: int) -> Callable[[], float]:
    return lambda: runner.capture(tokens)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

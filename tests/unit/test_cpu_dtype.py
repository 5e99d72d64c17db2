"""The number format a CPU serves in: bf16 under ``auto`` only where the CPU computes it and the
start-up self-check agrees, fp32 otherwise."""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch

import reranker_service.engine.loading as model_module
from reranker_service.engine import precision
from reranker_service.engine.loading import LoadOptions, load_single_device_model
from reranker_service.engine.precision import (
    PrecisionCheck,
    TimedScores,
    choose_auto_cpu_dtype,
    cpu_computes_bf16,
    cpu_flags,
)
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.model_card import ModelCardReranker
from tests.support.serving import asgi_client, logits, make_settings, probabilities


def _backbone(model: ServedModel) -> torch.nn.Module:
    runner = model.runner
    assert isinstance(runner, PaddedRunner)
    return runner._backbone


EPYC_ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: avx2 avx512f avx512_bf16\n"
SKYLAKE = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: avx2 avx512f avx512_vnni\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
QUERY = "what is the capital of france"
DOCUMENTS = [
    "paris is the capital of france",
    "berlin is the capital of germany",
    "the capital of france is a city on the seine, home to the louvre and the eiffel tower",
]


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(EPYC_ZEN4, True), (SKYLAKE, False), (SAPPHIRE_RAPIDS, True), (GRAVITON3, True), ("", False)],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool) -> None:
    assert cpu_computes_bf16(cpu_flags(cpuinfo)) is native


def _check(max_difference: float, speedup: float = 2.0) -> PrecisionCheck:
    return PrecisionCheck(max_difference, max_difference / 2, speedup)


AVX512_BF16 = cpu_flags(EPYC_ZEN4)


def test_auto_keeps_bf16_when_the_self_check_agrees() -> None:
    choice = choose_auto_cpu_dtype(AVX512_BF16, lambda: _check(0.004))
    assert (choice.dtype, choice.check) == ("bfloat16", _check(0.004))
    assert choice.reason == "this CPU computes bf16 (avx512_bf16), within the self-check's bound"


def test_a_timed_pass_never_decides() -> None:
    """Two noisy cores time one pass differently on every start: a bf16 pass that came out
    slower than fp32's keeps bf16 all the same."""
    choice = choose_auto_cpu_dtype(AVX512_BF16, lambda: _check(0.001, speedup=0.27))
    assert choice.dtype == "bfloat16"


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        (_check(0.3), "differ from fp32 by 0.3 > 0.02"),
        (_check(math.inf), "differ from fp32 by inf"),
    ],
)
def test_auto_refuses_bf16_the_self_check_does_not_trust(
    check: PrecisionCheck, reason: str
) -> None:
    choice = choose_auto_cpu_dtype(AVX512_BF16, lambda: check)
    assert choice.dtype == "float32"
    assert reason in choice.reason


def test_auto_without_native_bf16_runs_no_check() -> None:
    def no_check() -> PrecisionCheck:
        raise AssertionError("the self-check must not run")

    choice = choose_auto_cpu_dtype(cpu_flags(SKYLAKE), no_check)
    assert (choice.dtype, choice.check) == ("float32", None)
    assert "no bf16 instructions" in choice.reason
    assert choice.described().cpu_flags == ()


def test_a_nan_score_fails_the_check() -> None:
    check = PrecisionCheck.of(TimedScores([0.5, -1.0], 1.0), TimedScores([0.5, math.nan], 0.5))
    assert check.max_difference == math.inf


def _options(checkpoint: Path, dtype: str) -> LoadOptions:
    return LoadOptions(str(checkpoint), None, "cpu", dtype, 8192)


def _largest_difference_from_card(model: ServedModel, card: ModelCardReranker) -> float:
    pairs = model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS)
    served = probabilities(logits(model, pairs))
    expected = card.score_alone(None, QUERY, DOCUMENTS)
    return max(abs(a - b) for a, b in zip(served, expected, strict=True))


def _loaded_line(logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    [line] = [line for line in logs if line["event"] == "model_loaded"]
    return line


def test_auto_on_a_cpu_without_bf16_serves_fp32_exactly(
    checkpoint: Path, card: ModelCardReranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_module, "read_cpu_flags", lambda: cpu_flags(SKYLAKE))
    with structlog.testing.capture_logs() as logs:
        model = load_single_device_model(_options(checkpoint, "auto"))
    assert model.description.dtype == "float32"
    assert _loaded_line(logs)["dtype_reason"] == "this CPU has no bf16 instructions"
    assert _largest_difference_from_card(model, card) <= 1e-6


def test_auto_refused_by_the_self_check_reloads_fp32_weights(
    checkpoint: Path, card: ModelCardReranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check rounds the weights to bf16 in place: when it refuses, fp32 is read again, and
    the scores are the model card's to the last bits, not bf16's."""
    monkeypatch.setattr(model_module, "read_cpu_flags", lambda: cpu_flags(EPYC_ZEN4))
    monkeypatch.setattr(precision, "BF16_SELF_CHECK_BOUND", 0.0)
    with structlog.testing.capture_logs() as logs:
        model = load_single_device_model(_options(checkpoint, "auto"))
    line = _loaded_line(logs)
    assert model.description.dtype == "float32"
    assert line["dtype_reason"].startswith("bf16 scores differ from fp32")
    assert line["bf16_max_difference"] > 0
    assert {parameter.dtype for parameter in _backbone(model).parameters()} == {torch.float32}
    assert _largest_difference_from_card(model, card) <= 1e-6


def test_auto_kept_by_the_self_check_serves_bf16(
    checkpoint: Path, card: ModelCardReranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With native bf16 and a self-check that agrees, the weights are bf16 and the scores
    within bf16's bound (on the tiny test model bf16 may well be no faster: that decides
    nothing)."""
    monkeypatch.setattr(model_module, "read_cpu_flags", lambda: cpu_flags(SAPPHIRE_RAPIDS))
    with structlog.testing.capture_logs() as logs:
        model = load_single_device_model(_options(checkpoint, "auto"))
    line = _loaded_line(logs)
    assert model.description.dtype == "bfloat16"
    assert (
        line["dtype_reason"] == "this CPU computes bf16 (amx_bf16), within the self-check's bound"
    )
    assert 0 < line["bf16_max_difference"] <= precision.BF16_SELF_CHECK_BOUND
    assert next(_backbone(model).parameters()).dtype == torch.bfloat16
    assert _largest_difference_from_card(model, card) <= precision.BF16_SELF_CHECK_BOUND
    choice = model.description.dtype_choice
    assert choice is not None
    assert choice.cpu_flags == ("amx_bf16",)
    assert choice.self_check_max_difference == pytest.approx(line["bf16_max_difference"], rel=1e-2)


async def test_ten_starts_choose_alike_and_info_says_why(checkpoint: Path) -> None:
    """This machine's own flags, ten loads of the checkpoint under ``auto``: one format, one
    reason, one self-check difference; ``/info`` explains it."""
    choices = [
        load_single_device_model(_options(checkpoint, "auto")).description.dtype_choice
        for _ in range(9)
    ]
    settings = make_settings(checkpoint, dtype="auto")
    model = load_single_device_model(_options(checkpoint, "auto"))
    choices.append(model.description.dtype_choice)
    assert len(set(choices)) == 1, choices
    from reranker_service.app import create_app

    async with asgi_client(create_app(settings, model=model)) as http:
        info = (await http.get("/info")).json()
    chosen = choices[0]
    assert chosen is not None
    assert info["dtype"] == model.description.dtype
    assert info["dtype_choice"] == {
        "reason": chosen.reason,
        "cpu_flags": list(chosen.cpu_flags),
        "self_check_max_difference": chosen.self_check_max_difference,
    }
    if model.description.dtype == "bfloat16":
        assert set(chosen.cpu_flags) & precision.NATIVE_BF16_FLAGS

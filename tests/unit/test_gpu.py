"""The CUDA path: bf16 by default, scores still the model card's, from the padded runner, the
packed runner eager, and the packed runner compiled with its small buckets replayed from CUDA
graphs. Skipped without a GPU. Tests that are not about the runner serve the padded one eager,
so that each does not compile every bucket at load."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from reranker_service.app import load_options
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.prefix import shared_prefix
from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.packed import PackedOptions
from reranker_service.engine.runner.padded import right_padded
from reranker_service.engine.runner.protocol import ServedModel, run_pass
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.model_card import ModelCardReranker
from tests.support.serving import (
    logits,
    make_settings,
    new_prefix_id,
    prefixed_logits,
    probabilities,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "", "中文 🙂", "word " * 700]


def _gpu_model(checkpoint: Path, **overrides: object) -> ServedModel:
    values: dict[str, object] = {"device": "cuda", "runner": "padded", "compile": "false"}
    values.update(overrides)
    return load_single_device_model(load_options(make_settings(checkpoint, **values)))


# The packed runner compiled over a few buckets (up to 2 048 tokens, all of them graphed):
# compiling its default 13 buckets up to 32 768 tokens would take minutes per test.
_SMALL_BUCKETS: dict[str, object] = {"max_length": 1024, "max_batch_tokens": 2048}
_RUNNERS: dict[str, dict[str, object]] = {
    "padded": {"runner": "padded", "compile": "false"},
    "packed": {"runner": "packed", "compile": "false"},
    "packed-compiled": {"runner": "packed", "compile": "true", **_SMALL_BUCKETS},
}


def _compiled(model: ServedModel) -> ServedModel:
    """The model's compiled packed runner, prepared (every bucket compiled, the small ones
    captured) as the engine's foreground upgrade does, serving alone."""
    upgrade = model.upgrade_of(0)
    assert upgrade is not None
    runner = upgrade.build()
    runner.prepare()  # type: ignore[attr-defined]
    return ServedModel(model.encoder, (runner,))


@pytest.fixture(scope="module")
def compiled_models(checkpoint: Path) -> dict[str, ServedModel]:
    """The packed runner compiled, fp32 and bf16, each loaded (and compiled) once."""
    return {
        dtype: _compiled(_gpu_model(checkpoint, dtype=dtype, **_RUNNERS["packed-compiled"]))
        for dtype in ("float32", "auto")
    }


def _model(
    checkpoint: Path, compiled: dict[str, ServedModel], runner: str, dtype: str
) -> ServedModel:
    if runner == "packed-compiled":
        return compiled[dtype]
    return _gpu_model(checkpoint, dtype=dtype, **_RUNNERS[runner])


@pytest.mark.parametrize("runner", list(_RUNNERS))
@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-4), ("auto", 2e-2)])
def test_cuda_scores_match_the_model_card(
    checkpoint: Path,
    compiled_models: dict[str, ServedModel],
    runner: str,
    dtype: str,
    tolerance: float,
) -> None:
    """Each pair alone and all of them in one pass, with their shared prefix in the pass (the
    packed runner) or computed first and read (the padded one)."""
    model = _model(checkpoint, compiled_models, runner, dtype)
    assert model.description.device.startswith("cuda")
    if dtype == "auto":
        assert model.description.dtype in ("bfloat16", "float16")
    docs = [*DOCS[:3], "word " * 300]  # within the compiled runner's 1 024 tokens
    reference = ModelCardReranker(checkpoint, 8192).score_alone(None, QUERY, docs)
    sequences = model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, docs)
    alone = probabilities([logits(model, [sequence])[0] for sequence in sequences])
    prefix = (new_prefix_id(), shared_prefix(sequences))
    together = probabilities(prefixed_logits(model.runner, sequences, [prefix] * len(docs)))
    model.runner.release([prefix[0]])
    for ours in (alone, together):
        assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) <= tolerance


def test_the_compiled_runner_replays_its_small_buckets_from_cuda_graphs(
    compiled_models: dict[str, ServedModel],
) -> None:
    """Every bucket up to 2 048 tokens was captured at load, and a replay scores a pair as the
    same runner's eager pass past the buckets does."""
    from reranker_service.engine.runner.packed import PackedRunner

    runner = compiled_models["float32"].runner
    assert isinstance(runner, PackedRunner)
    assert runner.graphed_buckets == (128, 256, 512, 1024, 2048)
    assert runner.kind.cuda_graphs
    buffers = runner.staging.buffers(128)
    assert len(buffers) == 2  # two per bucket, used in turn
    assert all(buffer.is_pinned() for buffer in buffers)
    model = compiled_models["float32"]
    sequences = model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCS[:3])
    replayed = logits(model, sequences)
    eager = PackedRunner(
        runner._decoder,
        runner._score_direction,
        runner._pad_token_id,
        runner.description,
        PackedOptions(buckets=(4096,)),
    )
    eager_logits = run_pass(eager, sequences)
    assert max(abs(a - b) for a, b in zip(replayed, eager_logits, strict=True)) <= 1e-4


def test_poller_reads_the_real_driver_and_torch_memory(checkpoint: Path) -> None:
    from reranker_service.observability.gpu import GpuPoller, load_nvml
    from reranker_service.observability.metrics import ServiceMetrics
    from tests.support.exposition import Exposition

    model = _gpu_model(checkpoint)
    metrics = ServiceMetrics()
    poller = GpuPoller(
        metrics,
        interval_seconds=60,
        nvml=load_nvml(),
        read_device_memory=lambda: [m for m in [model.runner.memory()] if m is not None],
    )
    assert poller.poll_once() is True
    exposition = Exposition.of(metrics.registry)
    print(exposition.text)  # quoted in the issue note when run on a GPU machine
    assert exposition.value("reranker_nvml_up") == 1
    totals = exposition.samples("reranker_gpu_memory_total_bytes")
    assert len(totals) == torch.cuda.device_count()
    assert all(sample.value > 0 for sample in totals)
    device = model.description.device
    assert exposition.value("reranker_torch_memory_allocated_bytes", device=device) > 0


def test_host_batches_are_page_locked() -> None:
    input_ids, lengths = right_padded([[1, 2, 3], [4]], 0, pin=True)
    assert input_ids.is_pinned()
    assert lengths.is_pinned()


@pytest.mark.parametrize("runner", list(_RUNNERS))
async def test_overlapping_passes_keep_every_score_exact(
    checkpoint: Path, compiled_models: dict[str, ServedModel], runner: str
) -> None:
    """Many requests at once through the engine on the GPU: the worker launches pass k + 1
    before it takes pass k's scores; the padded runner's prefixes computed in one pass are
    read by the next, the packed runner's graph buffers are refilled while a pass's scores
    are still on their way to the host."""
    model = _model(checkpoint, compiled_models, runner, "float32")
    engine = RerankEngine(model, EngineConfig(2048, 100_000, 1000, 2))
    assert engine.overlapping_passes
    await engine.start()
    try:
        queries = [f"query {index} about France" for index in range(24)]
        outcomes = await asyncio.gather(
            *(engine.rerank(DEFAULT_INSTRUCTION, query, DOCS) for query in queries)
        )
    finally:
        await engine.stop()
    for query, outcome in zip(queries, outcomes, strict=True):
        sequences = model.encoder.encode(DEFAULT_INSTRUCTION, query, DOCS)
        alone = [probability(logits(model, [sequence])[0]) for sequence in sequences]
        assert shared_prefix(sequences)
        assert max(abs(a - b) for a, b in zip(outcome.scores, alone, strict=True)) <= 1e-4


def test_served_gpus_are_found_in_nvml_by_uuid(checkpoint: Path) -> None:
    """Each torch device's UUID is one NVML lists, and the poller names the served card."""
    from reranker_service.observability.gpu import GpuPoller, load_nvml
    from reranker_service.observability.metrics import ServiceMetrics
    from tests.support.exposition import Exposition

    nvml = load_nvml()
    nvml.nvmlInit()
    try:
        nvml_uuids = {
            str(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index)))
            for index in range(nvml.nvmlDeviceGetCount())
        }
    finally:
        nvml.nvmlShutdown()
    model = _gpu_model(checkpoint, device="cuda:0")
    uuid = model.description.device_uuid
    assert uuid in nvml_uuids
    metrics = ServiceMetrics()
    poller = GpuPoller(
        metrics,
        interval_seconds=60,
        nvml=load_nvml(),
        served_gpus={uuid: model.description.device},
    )
    assert poller.poll_once() is True
    served = [
        sample.labels
        for sample in Exposition.of(metrics.registry).samples("reranker_gpu_info")
        if sample.labels["device"] == "cuda:0"
    ]
    print(served)  # quoted in the issue note when run on a GPU machine
    assert [labels["uuid"] for labels in served] == [uuid]


async def test_out_of_memory_splits_a_real_pass_and_the_halves_fit(checkpoint: Path) -> None:
    """A pass too big for the memory torch may use, whose halves fit: the batcher splits it,
    with the failed pass's memory freed first, and every score comes back exact."""
    from structlog.testing import capture_logs

    from reranker_service.engine.scheduler.batcher import Batcher
    from reranker_service.engine.scheduler.pass_cost import PassCostModel

    model = _gpu_model(checkpoint, device="cuda:0", dtype="float32")
    device = torch.device("cuda", 0)
    sequences = model.encoder.encode(
        DEFAULT_INSTRUCTION, QUERY, [f"document {n} " + "word " * 1500 for n in range(32)]
    )
    expected = [logits(model, [sequence])[0] for sequence in sequences]

    def extra_peak(batch: list[list[int]]) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        logits(model, batch)
        return torch.cuda.max_memory_allocated(device) - before

    full, half = extra_peak(sequences), extra_peak(sequences[:16])
    assert full > 1.5 * half
    torch.cuda.empty_cache()
    limit = torch.cuda.memory_allocated(device) + (full + half) // 2
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(limit / total, device)
    try:
        batcher = Batcher(
            [model.runner],
            max_batch_tokens=1 << 20,
            max_queued_pairs=1000,
            # A fixed cost that dwarfs the cost per token: one pass of every pair is the best
            # batch by far (with a cost per token alone, the policy took the smallest window
            # within its tolerance, 24 of the 32 pairs, on an H200).
            pass_costs=PassCostModel([(1024, 1.0), (1 << 20, 1.1)]),
        )
        job = batcher.submit(sequences)
        with capture_logs() as logs:
            batcher.start()
            result = await asyncio.wait_for(job.future, 120)
            await batcher.stop()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    splits = [entry for entry in logs if entry["event"] == "oom_batch_split"]
    assert splits
    assert splits[0]["pairs"] == len(sequences)
    assert not [entry for entry in logs if entry["event"] == "oom_pair_failed"]
    assert max(abs(a - b) for a, b in zip(result.scores, expected, strict=True)) <= 1e-4


def test_bf16_on_the_0_6b_shape_stays_near_fp32(tmp_path: Path) -> None:
    """The published bf16 figures (docs/development.md), measured here on the GPU."""
    from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B, build_checkpoint
    from tests.unit.test_bf16 import load_drift_bench

    drift = load_drift_bench()
    checkpoint = build_checkpoint(tmp_path / "0.6b", QWEN3_RERANKER_0_6B)
    result = drift.measure(str(checkpoint), "cuda:0", 8192)
    print(result)  # quoted in the issue note when run on a GPU machine
    assert max(result["float32_batch_drift_max"].values()) <= 1e-4
    assert result["bf16_vs_fp32_max"] <= drift.BF16_VS_FP32_BOUND
    assert max(result["bfloat16_batch_drift_max"].values()) <= drift.BF16_BATCH_DRIFT_BOUND


async def test_every_gpu_serves_in_one_engine(checkpoint: Path) -> None:
    """``cuda:all`` on a machine with two GPUs or more: a replica and a worker each, each
    worker on its own current device, scores as one replica gives them alone."""
    import threading

    from reranker_service.engine.loading import load_model
    from reranker_service.engine.scheduler.jobs import BatchReport

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    settings = make_settings(checkpoint, device="cuda:all", dtype="float32", compile="false")
    replicas = load_model(load_options(settings))
    assert [runner.description.device for runner in replicas.runners] == [
        f"cuda:{index}" for index in range(torch.cuda.device_count())
    ]
    current: dict[str, set[int]] = {}
    lock = threading.Lock()

    def note_device(report: BatchReport) -> None:
        with lock:
            current.setdefault(report.device, set()).add(torch.cuda.current_device())

    engine = RerankEngine(replicas, EngineConfig(2048, 100_000, 1000, 2), observer=note_device)
    await engine.start()
    try:
        queries = [f"query {index} about France" for index in range(64)]
        outcomes = await asyncio.gather(
            *(engine.rerank(DEFAULT_INSTRUCTION, query, DOCS) for query in queries)
        )
    finally:
        await engine.stop()
    assert len(current) >= 2, f"passes ran on {sorted(current)} only"
    for name, devices in current.items():
        assert devices == {int(name.partition(":")[2])}
    for query, outcome in zip(queries, outcomes, strict=True):
        sequences = replicas.encoder.encode(DEFAULT_INSTRUCTION, query, DOCS)
        alone = [probability(logits(replicas, [sequence])[0]) for sequence in sequences]
        assert max(abs(a - b) for a, b in zip(outcome.scores, alone, strict=True)) <= 1e-4


def test_the_auto_dtype_is_the_served_gpus(checkpoint: Path) -> None:
    """Served on the last GPU, ``auto`` asks that GPU whether it computes bf16."""
    last = torch.cuda.device_count() - 1
    # make_settings pins float32 for the CPU tests: ask for auto, the GPU's default.
    model = _gpu_model(checkpoint, device=f"cuda:{last}", dtype="auto")
    native = torch.cuda.get_device_capability(last) >= (8, 0)
    assert model.description.dtype == ("bfloat16" if native else "float16")
    assert model.description.device == f"cuda:{last}"


async def test_a_background_replica_swaps_in_its_compiled_runner_with_graphs(
    checkpoint: Path,
) -> None:
    """``RERANKER_COMPILE=background`` on the GPU: ready on the padded runner, then the
    compiled packed runner, its small buckets captured on the worker's own thread between
    passes, self-checked and swapped in; the scores stay the model card's throughout."""
    model = _gpu_model(checkpoint, dtype="float32", runner="auto", compile="background",
                       **_SMALL_BUCKETS)  # fmt: skip
    engine = RerankEngine(model, EngineConfig(2048, 100_000, 1000, 2))
    await engine.start()
    try:
        before = await engine.rerank(DEFAULT_INSTRUCTION, QUERY, DOCS[:3])
        assert await asyncio.to_thread(engine.wait_for_compiled_runners, 600)
        (status,) = engine.runner_statuses()
        assert status.compile.state == "compiled", status
        assert status.runner.name == "packed"
        assert status.runner.cuda_graphs
        after = await engine.rerank(DEFAULT_INSTRUCTION, QUERY, DOCS[:3])
    finally:
        await engine.stop()
    reference = ModelCardReranker(checkpoint, 8192).score_alone(None, QUERY, DOCS[:3])
    for outcome in (before, after):
        assert max(abs(a - b) for a, b in zip(outcome.scores, reference, strict=True)) <= 1e-4


def test_each_gpu_captures_on_a_stream_of_its_own(checkpoint: Path) -> None:
    """Compiled runners on two GPUs in one process: each captures its graphs (on a side stream
    of its own device; one shared default stream made on the first GPU fails the second)."""
    from reranker_service.engine.loading import load_model

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    settings = make_settings(checkpoint, device="cuda:0,cuda:1", dtype="float32",
                             compile="true", **_SMALL_BUCKETS)  # fmt: skip
    replicas = load_model(load_options(settings))
    for index, upgrade in enumerate(replicas.upgrades):
        assert upgrade is not None
        runner = upgrade.build()
        torch.cuda.set_device(index)
        runner.prepare()  # type: ignore[attr-defined]
        assert runner.kind.cuda_graphs
        assert torch.cuda.current_stream(index) == torch.cuda.default_stream(index)

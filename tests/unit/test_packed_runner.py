"""The packed runner against the model card on the tiny checkpoint, in fp32 on the CPU: its
dense-mask form (the CPU's), its FlexAttention form (the GPU's, here eager), and compiled.
Passes mix requests with and without a prefix, custom instructions and truncated documents."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
import torch

from reranker_service.app import create_app, load_options
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.prefix import shared_prefix
from reranker_service.engine.runner.build import RunnerOptions, RunnerPlan, plan_runner
from reranker_service.engine.runner.packed import PackedOptions, PackedRunner
from reranker_service.engine.runner.packing import stream_tokens, token_buckets
from reranker_service.engine.runner.protocol import PassBatch, PassPair, ServedModel
from reranker_service.engine.runner.qwen3_decoder import PackedDecoder
from reranker_service.engine.scoring import ModelLoadError
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.model_card import ModelCardReranker
from tests.support.serving import SMALL_MAX_LENGTH, asgi_client, make_settings

TOLERANCE = 1e-5
QUERY = "What is the capital of France?"
OTHER_QUERY = "Which river flows through Paris?"
INSTRUCTION = "Given a question, retrieve passages written in French that answer it"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "",
    "Ünïcödé: 中文文本, русский текст, emoji 🙂👍🏽",
    "yes",
]


def _long_document(words: int, seed: int) -> str:
    rng = random.Random(seed)
    vocab = ["capital", "France", "river", "Ünï", "中文", "gravity", "token", "🙂", "and", "the"]
    return " ".join(rng.choice(vocab) for _ in range(words))


@pytest.fixture(scope="module")
def packed_model(checkpoint: Path) -> ServedModel:
    """The loader's packed runner on the CPU: eager, dense mask."""
    model = load_single_device_model(load_options(make_settings(checkpoint, runner="packed")))
    assert isinstance(model.runner, PackedRunner)
    return model


def _runner(model: ServedModel, options: PackedOptions) -> PackedRunner:
    """Another packed runner on the same weights."""
    base = model.runner
    assert isinstance(base, PackedRunner)
    return PackedRunner(
        base._decoder, base._score_direction, base._pad_token_id, base.description, options
    )


@pytest.fixture(scope="module", params=["dense", "flex"])
def runner(request: pytest.FixtureRequest, packed_model: ServedModel) -> PackedRunner:
    flex = request.param == "flex"
    return _runner(packed_model, PackedOptions(token_buckets(8192), flex=flex))


class _Requests:
    """Requests as the engine would hand their pairs to a pass: each with its prefix, or none,
    and the model card's raw score of each pair alone."""

    def __init__(self, model: ServedModel, card: ModelCardReranker) -> None:
        self._model, self._card = model, card
        self.pairs: list[PassPair] = []
        self.expected: list[float] = []
        self._ids = iter(range(1000))

    def add(
        self, instruction: str | None, query: str, documents: list[str], *, prefix: bool
    ) -> None:
        sequences = self._model.encoder.encode(instruction or DEFAULT_INSTRUCTION, query, documents)
        length = shared_prefix(sequences) if prefix and len(sequences) > 1 else 0
        prefix_id = next(self._ids) if length else None
        self.pairs.extend(PassPair(sequence, prefix_id, length) for sequence in sequences)
        self.expected.extend(self._card.raw_alone(instruction, query, documents))

    def batch(self, order: Iterable[int] | None = None) -> PassBatch:
        indices = list(order) if order is not None else list(range(len(self.pairs)))
        return PassBatch([self.pairs[index] for index in indices])


def _assert_close(ours: list[float], reference: list[float]) -> None:
    worst = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    assert worst <= TOLERANCE, f"max abs difference {worst:.2e} > {TOLERANCE:.0e}"


def _mixed(model: ServedModel, card: ModelCardReranker) -> _Requests:
    requests = _Requests(model, card)
    requests.add(None, QUERY, DOCUMENTS, prefix=True)
    requests.add(INSTRUCTION, OTHER_QUERY, DOCUMENTS[:3], prefix=True)
    requests.add(None, OTHER_QUERY, [DOCUMENTS[0], _long_document(300, 1)], prefix=False)
    requests.add(None, "one document", [DOCUMENTS[1]], prefix=True)  # one pair: no prefix
    return requests


def test_a_mixed_pass_matches_the_model_card(
    runner: PackedRunner, packed_model: ServedModel, card: ModelCardReranker
) -> None:
    requests = _mixed(packed_model, card)
    assert sum(pair.prefix_id is not None for pair in requests.pairs) == 8
    _assert_close(runner.launch(requests.batch()).result(), requests.expected)


def test_truncated_documents_match_the_model_card(
    checkpoint: Path, short_card: ModelCardReranker
) -> None:
    settings = make_settings(checkpoint, runner="packed", max_length=SMALL_MAX_LENGTH)
    model = load_single_device_model(load_options(settings))
    requests = _Requests(model, short_card)
    documents = [_long_document(400, seed) for seed in range(3)] + DOCUMENTS[:2]
    requests.add(None, QUERY, documents, prefix=True)
    requests.add(INSTRUCTION, _long_document(300, 99), DOCUMENTS[:2], prefix=True)
    assert max(len(pair.tokens) for pair in requests.pairs) == SMALL_MAX_LENGTH
    _assert_close(model.runner.launch(requests.batch()).result(), requests.expected)


def test_a_pairs_score_does_not_depend_on_its_bucket_or_its_pass_mates(
    runner: PackedRunner, packed_model: ServedModel, card: ModelCardReranker
) -> None:
    requests = _mixed(packed_model, card)
    together = runner.launch(requests.batch()).result()
    reversed_order = runner.launch(requests.batch(reversed(range(len(requests.pairs)))))
    assert (
        max(abs(a - b) for a, b in zip(together, reversed_order.result()[::-1], strict=True))
        <= TOLERANCE
    )
    # Each pair with its prefix, alone: the smallest bucket instead of a large one.
    for index, pair in enumerate(requests.pairs):
        (alone,) = runner.launch(PassBatch([pair])).result()
        assert abs(alone - together[index]) <= TOLERANCE
    wide = _runner(packed_model, PackedOptions((4096,), flex=runner._flex))
    _assert_close(wide.launch(requests.batch()).result(), together)


def test_a_stream_past_the_largest_bucket_runs_in_whole_tiles(
    packed_model: ServedModel, card: ModelCardReranker
) -> None:
    small = _runner(packed_model, PackedOptions((128,)))
    requests = _mixed(packed_model, card)
    assert stream_tokens(requests.batch()) > 128
    _assert_close(small.launch(requests.batch()).result(), requests.expected)


def test_the_runner_costs_a_pass_in_bucketed_stream_tokens(runner: PackedRunner) -> None:
    from reranker_service.engine.runner.protocol import PassShape

    assert runner.pass_tokens(PassShape(pairs=3, longest=50, tokens=100, prefix_tokens=40)) == 256
    assert runner.pass_tokens(PassShape(pairs=1, longest=100, tokens=100)) == 128
    assert runner.pass_tokens(PassShape(pairs=40, longest=100, tokens=2500)) == 3072


@pytest.mark.slow
def test_the_compiled_runner_matches_the_model_card(
    packed_model: ServedModel, card: ModelCardReranker
) -> None:
    """Compiled with inductor on the CPU (FlexAttention's CPU kernel), every bucket prepared
    at start-up as on a GPU; about 15 s a bucket on two cores."""
    compiled = _runner(packed_model, PackedOptions((128, 256), compiled=True))
    prepared = compiled.prepare()
    assert [tokens for tokens, _ in prepared.bucket_seconds] == [128, 256]
    requests = _mixed(packed_model, card)
    _assert_close(compiled.launch(requests.batch()).result(), requests.expected)
    pair = requests.pairs[0]
    (alone,) = compiled.launch(PassBatch([pair])).result()
    assert abs(alone - requests.expected[0]) <= TOLERANCE


async def test_the_packed_service_answers_as_the_padded_one(
    checkpoint: Path, short_scoring_model: ServedModel
) -> None:
    """Through the engine and HTTP, on equal requests: windows of long documents, a custom
    instruction, raw scores. The padded service's answers are the model card's (see
    test_scoring and test_windows)."""
    settings = make_settings(checkpoint, runner="packed", max_length=SMALL_MAX_LENGTH)
    packed = load_single_device_model(load_options(settings))
    documents = [_long_document(400, seed) for seed in range(3)] + DOCUMENTS
    bodies: list[dict[str, object]] = [
        {"query": QUERY, "documents": documents, "max_chunks_per_doc": 3},
        {"query": QUERY, "documents": DOCUMENTS, "instruction": INSTRUCTION},
    ]
    answers = []
    for model, runner_setting in ((packed, "packed"), (short_scoring_model, "padded")):
        overrides = {"runner": runner_setting, "max_length": SMALL_MAX_LENGTH}
        app = create_app(make_settings(checkpoint, **overrides), model=model)
        async with asgi_client(app) as client:
            answers.append(
                [
                    _by_index(await client.post("/rerank", json={**body, "raw_scores": True}))
                    for body in bodies
                ]
            )
    (packed_windows, packed_custom), (padded_windows, padded_custom) = answers
    _assert_close(packed_windows, padded_windows)
    _assert_close(packed_custom, padded_custom)


def _by_index(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    results = sorted(response.json()["results"], key=lambda result: result["index"])
    return [result["relevance_score"] for result in results]


@pytest.mark.parametrize(
    ("runner_setting", "compile_setting", "device", "expected"),
    [
        ("auto", "auto", "cpu", RunnerPlan("padded", "never")),
        ("auto", "auto", "cuda", RunnerPlan("padded", "background")),
        ("auto", "background", "cpu", RunnerPlan("padded", "background")),
        ("packed", "auto", "cuda", RunnerPlan("padded", "background")),
        ("auto", "false", "cuda", RunnerPlan("padded", "never")),
        ("packed", "false", "cuda", RunnerPlan("packed", "never")),
        ("auto", "true", "cpu", RunnerPlan("padded", "foreground")),
        ("packed", "auto", "cpu", RunnerPlan("packed", "never")),
        ("padded", "auto", "cuda", RunnerPlan("padded", "never")),
    ],
)
def test_the_runner_each_device_gets(
    runner_setting: str, compile_setting: str, device: str, expected: RunnerPlan
) -> None:
    options = RunnerOptions(runner=runner_setting, compile=compile_setting)
    assert plan_runner(options, device) == expected


def test_compiling_asks_for_the_packed_runner() -> None:
    for compile_setting in ("true", "background"):
        with pytest.raises(ModelLoadError, match="compiles the packed runner"):
            plan_runner(RunnerOptions(runner="padded", compile=compile_setting), "cpu")


def test_a_checkpoint_the_packed_decoder_cannot_compute_is_refused(
    scoring_model: ServedModel,
) -> None:
    from reranker_service.engine.runner.qwen3_decoder import UnpackableModelError

    backbone = scoring_model.runner._backbone  # type: ignore[attr-defined]
    backbone.config.use_sliding_window = True
    try:
        with pytest.raises(UnpackableModelError, match="sliding"):
            PackedDecoder(backbone)
    finally:
        backbone.config.use_sliding_window = False


class _ReplayedOnTheCpu:
    """Stands in for ``torch.cuda.CUDAGraph``, which cannot exist without a GPU: ``replay()``
    runs the captured pass again on the same static buffers, writing the same output tensor,
    as a graph's replay does."""

    def __init__(self, runner: PackedRunner, inputs: torch.Tensor) -> None:
        tokens = inputs.shape[1]
        self._run = lambda: runner._forward(inputs, tokens)
        self.output = self._run()

    def replay(self) -> None:
        self.output.copy_(self._run())


def test_a_replayed_bucket_refills_its_buffers_and_reads_only_its_pairs(
    packed_model: ServedModel, card: ModelCardReranker
) -> None:
    """The GPU's graph path on the CPU: each pass copies its stream and readout indices into
    the bucket's static buffers, replays, and takes the first scores only."""
    from reranker_service.engine.runner.graphs import CapturedPass
    from reranker_service.engine.runner.packed import _GraphedBucket

    runner = _runner(packed_model, PackedOptions((1024,)))
    inputs = torch.zeros((5, 1024), dtype=torch.long)
    inputs[2] = torch.arange(1024)
    inputs[3] = -1
    with torch.inference_mode():
        graph = _ReplayedOnTheCpu(runner, inputs)
    runner._graphs[1024] = _GraphedBucket(CapturedPass(graph, graph.output), inputs)
    requests = _mixed(packed_model, card)
    _assert_close(runner.launch(requests.batch()).result(), requests.expected)
    # A smaller pass after a larger one: no score of the earlier pass leaks into it.
    pair = requests.pairs[1]
    assert runner.launch(PassBatch([pair])).result() == pytest.approx(
        [requests.expected[1]], abs=TOLERANCE
    )

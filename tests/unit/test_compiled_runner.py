"""The compiled packed runner's own guarantees, on the CPU (inductor's C++ and FlexAttention's
CPU kernel): each runner compiles functions of its own, one static graph per bucket for the
decoder layer and for the mask builder alike, so that any number of GPUs fits dynamo's
recompile limit and no pass recompiles; its input buffers are kept per bucket and refilled."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch._dynamo.config as dynamo_config

from reranker_service.app import load_options
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.prefix import shared_prefix_length
from reranker_service.engine.runner.compiler import compiled_entries
from reranker_service.engine.runner.packed import PackedOptions, PackedRunner
from reranker_service.engine.runner.protocol import PassBatch, PassPair, ServedModel
from reranker_service.engine.runner.qwen3_decoder import decoder_layer
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.model_card import ModelCardReranker
from tests.support.serving import make_settings

pytestmark = pytest.mark.slow  # each bucket compiles for several seconds on two cores

BUCKETS = (128, 256, 384)
TOLERANCE = 1e-5
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Berlin is in Germany.", "", "word " * 60]


@pytest.fixture(scope="module")
def packed_model(checkpoint: Path) -> ServedModel:
    return load_single_device_model(load_options(make_settings(checkpoint, runner="packed")))


def _compiled(model: ServedModel) -> PackedRunner:
    base = model.runner
    assert isinstance(base, PackedRunner)
    return PackedRunner(
        base._decoder,
        base._score_direction,
        base._pad_token_id,
        base.description,
        PackedOptions(BUCKETS, compiled=True),
    )


@pytest.fixture(scope="module")
def runners(packed_model: ServedModel) -> list[PackedRunner]:
    """Three compiled runners in one process, as three GPUs' workers, each prepared with
    dynamo failing, not falling back, past its recompile limit. Each runner raises that limit
    to its own buckets and two, whatever the number of runners: three runners' nine graphs of
    one function would pass it."""
    prepared = []
    with _recompile_limit(4):
        for _ in range(3):
            runner = _compiled(packed_model)
            runner.prepare()
            prepared.append(runner)
        assert dynamo_config.recompile_limit == len(BUCKETS) + 2
    return prepared


@pytest.fixture
def no_recompiles() -> Iterator[None]:
    previous = dynamo_config.error_on_recompile
    dynamo_config.error_on_recompile = True
    try:
        yield
    finally:
        dynamo_config.error_on_recompile = previous


class _recompile_limit:  # noqa: N801 - a context manager read as a phrase
    def __init__(self, limit: int) -> None:
        self._limit = limit

    def __enter__(self) -> None:
        self._saved = (dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit)
        dynamo_config.recompile_limit = self._limit
        dynamo_config.fail_on_recompile_limit_hit = True

    def __exit__(self, *args: object) -> None:
        dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit = self._saved


def _requests(model: ServedModel) -> list[PassBatch]:
    """Passes of new compositions in each bucket: a prefixed request, plain pairs, both."""
    sequences = model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS)
    prefix = shared_prefix_length(sequences)
    prefixed = [PassPair(sequence, 0, prefix) for sequence in sequences]
    plain = [PassPair(sequence) for sequence in sequences]
    return [
        PassBatch(prefixed[:1]),
        PassBatch([prefixed[0], plain[1]]),
        PassBatch(prefixed[:3]),
        PassBatch(plain),
        PassBatch([*prefixed, *plain[:2]]),
    ]


def test_each_runner_compiles_functions_of_its_own_one_graph_per_bucket(
    runners: list[PackedRunner],
) -> None:
    for runner in runners:
        assert [compiled_entries(function) for function in runner.compiled_functions] == [3, 3]
    # Nothing was compiled on the shared function, whose graphs every runner would share.
    assert compiled_entries(decoder_layer) == 0
    owners = {function.__code__ for runner in runners for function in runner.compiled_functions}
    assert len(owners) == 6


def test_passes_of_every_composition_match_the_card_without_recompiling_from_two_threads(
    runners: list[PackedRunner],
    packed_model: ServedModel,
    card: ModelCardReranker,
    no_recompiles: None,
) -> None:
    expected = dict(
        zip(
            map(tuple, packed_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS)),
            card.raw_alone(None, QUERY, DOCUMENTS),
            strict=True,
        )
    )
    errors: list[BaseException] = []

    def serve(runner: PackedRunner) -> None:
        try:
            for batch in _requests(packed_model):
                scores = runner.launch(batch).result()
                for pair, score in zip(batch.pairs, scores, strict=True):
                    assert abs(score - expected[tuple(pair.tokens)]) <= TOLERANCE
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(runner,)) for runner in runners[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    for runner in runners[:2]:
        assert [compiled_entries(function) for function in runner.compiled_functions] == [3, 3]


def test_a_bucket_keeps_its_input_buffer_and_refills_it(
    runners: list[PackedRunner], packed_model: ServedModel
) -> None:
    runner = runners[2]
    first, second = (
        PassBatch([PassPair(sequence)])
        for sequence in packed_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS[:2])
    )
    runner.launch(first).result()
    (buffer,) = runner.staging.buffers(128)
    address = buffer.data_ptr()
    runner.launch(second).result()
    assert runner.staging.buffers(128) == (buffer,)
    assert buffer.data_ptr() == address
    tokens = list(second.pairs[0].tokens)
    assert buffer[0, : len(tokens)].tolist() == tokens
    assert buffer[4, 0] == len(tokens) - 1  # its score is read at its last token
    assert not buffer[4, 1:].any()
    assert not buffer.is_pinned()  # page-locked on a GPU only

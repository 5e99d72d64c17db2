"""How outcomes are classified and which completion lines are kept."""

from __future__ import annotations

import random

import pytest

from reranker_service.api.telemetry import RequestLogPolicy, RerankRecord, metric_error_type
from reranker_service.observability.metrics import ERROR_TYPES


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        ("validation", 422, "validation"),
        ("invalid_json", 400, "validation"),
        ("method_not_allowed", 405, "validation"),
        ("payload_too_large", 413, "payload_too_large"),
        ("unauthorized", 401, "unauthorized"),
        ("overloaded", 429, "overloaded"),
        ("not_ready", 503, "unavailable"),
        ("draining", 503, "unavailable"),
        ("internal", 500, "internal"),
        (None, 500, "internal"),  # an exception that escaped every handler
        ("internal", None, "internal"),  # raised before any response started
        (None, None, "client_disconnected"),  # cancelled: the client went away
        ("some_future_type", 418, "validation"),
    ],
)
def test_outcomes_map_onto_the_metric_types(
    error: str | None, status: int | None, expected: str
) -> None:
    assert metric_error_type(error, status) == expected
    assert expected in ERROR_TYPES


def test_sampling_keeps_the_configured_share() -> None:
    policy = RequestLogPolicy(sample_rate=0.3, rng=random.Random(7))
    kept = sum(policy.keep_success_line() for _ in range(20_000))
    assert 0.28 < kept / 20_000 < 0.32
    assert all(RequestLogPolicy(sample_rate=1.0).keep_success_line() for _ in range(1000))
    assert not any(RequestLogPolicy(sample_rate=0.0).keep_success_line() for _ in range(1000))


def test_query_text_is_cut_and_only_when_asked() -> None:
    record = RerankRecord(query="what is the capital of france")
    assert RequestLogPolicy(query_chars=0).query_field(record) == {}
    assert RequestLogPolicy(query_chars=7).query_field(record) == {"query": "what is"}
    assert RequestLogPolicy(query_chars=7).query_field(RerankRecord()) == {}

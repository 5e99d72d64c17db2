"""How outcomes are classified and which completion lines are kept."""

from __future__ import annotations

import random

import httpx
import pytest

from reranker_service.api.record import (
    MissingRecordError,
    RecordMiddleware,
    RerankRecord,
    required_record,
)
from reranker_service.api.telemetry import (
    RequestLogPolicy,
    RerankTelemetryMiddleware,
    metric_error_type,
)
from reranker_service.observability.metrics import ERROR_TYPES
from tests.support.serving import AppFactory, asgi_client


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


async def test_every_scoring_route_is_watched(client: httpx.AsyncClient) -> None:
    """The scoring routes are found from their router: each one the OpenAPI document tags
    ``rerank`` answers with the telemetry's timing headers, its failures included."""
    spec = (await client.get("/openapi.json")).json()
    scoring = [
        path
        for path, item in spec["paths"].items()
        if "rerank" in item.get("post", {}).get("tags", [])
    ]
    assert len(scoring) >= 4  # /rerank, /v1/rerank, /v2/rerank, /score
    for path in scoring:
        refused = await client.post(path, json={})
        assert refused.status_code == 422
        assert "x-total-time" in refused.headers, path


WATCHING_MIDDLEWARE: set[object] = {RerankTelemetryMiddleware, RecordMiddleware}


async def test_a_scoring_route_without_a_record_is_a_wiring_error(
    app_factory: AppFactory,
) -> None:
    """Not a throwaway record that no metric or log line reads: the route fails loudly (a 500
    under a server; the in-process transport raises it)."""
    app = app_factory()
    app.user_middleware = [
        middleware
        for middleware in app.user_middleware
        if middleware.cls not in WATCHING_MIDDLEWARE
    ]
    async with asgi_client(app) as http:
        with pytest.raises(MissingRecordError, match="/v2/rerank scores without a request record"):
            await http.post("/v2/rerank", json={"query": "q", "documents": ["a"]})
    stored = RerankRecord()
    assert required_record({"path": "/v2/rerank", "state": {"rerank_record": stored}}) is stored

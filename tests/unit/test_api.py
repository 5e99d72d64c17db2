"""The HTTP API through the real ASGI app, lifespan running, real model behind it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from reranker_service.app import create_app
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.exposition import Exposition
from tests.support.serving import AppFactory, GatedModel, asgi_client, logits, make_settings

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Berlin is in Germany.", "Cheese.", "Rivers flow."]


def _reference(
    model: ServedModel, docs: list[str], instruction: str = DEFAULT_INSTRUCTION
) -> list[float]:
    return [
        probability(logits(model, model.encoder.encode(instruction, QUERY, [doc]))[0])
        for doc in docs
    ]


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
async def test_rerank_orders_by_score(
    client: httpx.AsyncClient, scoring_model: ServedModel, path: str
) -> None:
    response = await client.post(path, json={"query": QUERY, "documents": DOCS})
    assert response.status_code == 200
    body = response.json()
    expected = _reference(scoring_model, DOCS)
    assert [r["index"] for r in body["results"]] == sorted(
        range(len(DOCS)), key=lambda i: -expected[i]
    )
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)
        assert "document" not in result
    assert body["id"] == response.headers["x-request-id"]
    assert body["model"] == scoring_model.description.model
    encoded = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCS)
    assert body["usage"]["total_tokens"] == sum(len(ids) for ids in encoded)
    assert body["meta"]["api_version"]["version"] == ("2" if path == "/v2/rerank" else "1")


async def test_top_n_and_returned_documents(client: httpx.AsyncClient) -> None:
    objects = [{"text": doc, "id": f"doc-{i}"} for i, doc in enumerate(DOCS)]
    full = (await client.post("/rerank", json={"query": QUERY, "documents": DOCS})).json()
    response = await client.post(
        "/rerank",
        json={"query": QUERY, "documents": objects, "top_n": 2, "return_documents": True},
    )
    body = response.json()
    assert [r["index"] for r in body["results"]] == [r["index"] for r in full["results"][:2]]
    for result in body["results"]:
        assert result["document"] == {"text": DOCS[result["index"]]}


async def test_top_n_larger_than_list_returns_all(client: httpx.AsyncClient) -> None:
    body = (
        await client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 10**6})
    ).json()
    assert sorted(r["index"] for r in body["results"]) == list(range(len(DOCS)))


async def test_custom_instruction_is_used(
    client: httpx.AsyncClient, scoring_model: ServedModel
) -> None:
    instruction = "Retrieve documents about European capitals"
    body = (
        await client.post(
            "/v1/rerank", json={"query": QUERY, "documents": DOCS, "instruction": instruction}
        )
    ).json()
    expected = _reference(scoring_model, DOCS, instruction)
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)


async def test_empty_document_list_is_an_empty_answer(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/rerank", json={"query": QUERY, "documents": []})
    assert response.status_code == 200
    assert response.json()["results"] == []


async def test_request_id_is_echoed_or_minted(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health", headers={"X-Request-ID": "client-id.42"})
    assert echoed.headers["x-request-id"] == "client-id.42"
    minted = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert minted.headers["x-request-id"] not in ("", "bad id\twith spaces")
    error = await client.post("/rerank", json={}, headers={"X-Request-ID": "err-1"})
    assert error.headers["x-request-id"] == "err-1"
    assert error.json()["error"]["request_id"] == "err-1"


async def test_health_ready_info(client: httpx.AsyncClient, scoring_model: ServedModel) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}
    info = (await client.get("/info")).json()
    assert info["model"] == scoring_model.description.model
    assert info["device"] == "cpu"
    assert info["dtype"] == "float32"
    assert info["max_length"] == 8192
    assert info["max_documents"] == 1000
    assert info["max_batch_tokens"] >= 8192
    assert info["version"]


async def test_too_many_documents_is_413_naming_the_limit(app_factory: AppFactory) -> None:
    app = app_factory(max_documents=3)
    async with asgi_client(app) as http:
        response = await http.post("/rerank", json={"query": QUERY, "documents": DOCS})
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["type"], error["field"], error["limit"], error["value"]) == (
        "payload_too_large",
        "documents",
        3,
        4,
    )


async def test_body_over_the_limit_is_413_before_parsing(app_factory: AppFactory) -> None:
    app = app_factory(max_request_bytes=2048)
    big = {"query": QUERY, "documents": ["x" * 1000] * 3}
    async with asgi_client(app) as http:
        declared = await http.post("/rerank", json=big)

        async def stream() -> Any:
            payload = json.dumps(big).encode()
            for start in range(0, len(payload), 512):
                yield payload[start : start + 512]

        streamed = await http.post(
            "/rerank", content=stream(), headers={"content-type": "application/json"}
        )
    for response in (declared, streamed):
        assert response.status_code == 413
        error = response.json()["error"]
        assert (error["type"], error["field"], error["limit"]) == (
            "payload_too_large",
            "body",
            2048,
        )
        assert error["value"] > 2048


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"documents": DOCS}, "query"),
        ({"query": "", "documents": DOCS}, "query"),
        ({"query": QUERY}, "documents"),
        ({"query": QUERY, "documents": "not a list"}, "documents"),
        ({"query": QUERY, "documents": [1, 2]}, "documents[0]"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, "documents[0].text"),
        ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "top_n": -5}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "top_n": "many"}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "return_documents": "perhaps"}, "return_documents"),
        ({"query": ["a"], "documents": DOCS}, "query"),
        ({"query": QUERY, "documents": DOCS, "instruction": ""}, "instruction"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, payload: dict[str, Any], field: str
) -> None:
    response = await client.post("/rerank", json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation"
    assert field in [detail["field"] for detail in error["details"]]


async def test_a_bad_document_is_named_as_a_client_writes_it(client: httpx.AsyncClient) -> None:
    """Not pydantic's internals (``documents.1.str``, the union member's type): the field as
    the request spells it, one plain message per field, and no value for a missing field."""
    bad = await client.post("/rerank", json={"query": QUERY, "documents": ["fine", 7]})
    error = bad.json()["error"]
    assert [detail["field"] for detail in error["details"]] == ["documents[1]"]
    message = error["message"]
    assert message.startswith("documents[1]: Input should be a valid string or a valid dictionary")
    assert "DocumentObject" not in message
    assert error["value"] == 7
    missing = await client.post("/rerank", json={"query": QUERY})
    error = missing.json()["error"]
    assert (error["field"], error["message"]) == ("documents", "documents: Field required")
    assert "value" not in error  # not the body's type name, "dict"


@pytest.mark.parametrize(
    ("document", "field", "message", "value"),
    [
        ({"text": 3}, "documents[1].text", "Input should be a valid string", 3),
        ({"title": "no text"}, "documents[1].text", "Field required", None),
    ],
)
async def test_a_bad_document_object_names_what_is_wrong_inside_it(
    client: httpx.AsyncClient, document: dict[str, Any], field: str, message: str, value: Any
) -> None:
    """Not "documents[1]: Input should be a valid string": the object is a document object,
    and what is wrong is its text."""
    bad = await client.post("/v2/rerank", json={"query": QUERY, "documents": ["fine", document]})
    assert bad.status_code == 422
    error = bad.json()["error"]
    assert (error["field"], error["message"]) == (field, f"{field}: {message}")
    assert error.get("value") == value
    assert [detail["field"] for detail in error["details"]] == [field]


async def test_limit_is_reported_for_bounds(client: httpx.AsyncClient) -> None:
    error = (
        await client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 0})
    ).json()["error"]
    assert (error["field"], error["limit"], error["value"]) == ("top_n", 1, 0)


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    wrong = await client.get("/rerank")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "method_not_allowed"


async def test_api_key_guards_the_scoring_routes_only(app_factory: AppFactory) -> None:
    app = app_factory(api_key="s3cret-key")
    payload = {"query": QUERY, "documents": DOCS}
    score_payload = {"text_1": QUERY, "text_2": DOCS}
    async with asgi_client(app) as http:
        for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/score"):
            body = score_payload if path == "/score" else payload
            missing = await http.post(path, json=body)
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"]["type"] == "unauthorized"
            wrong = await http.post(path, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert "s3cret-key" not in wrong.text
            basic = await http.post(path, json=body, headers={"Authorization": "Basic s3cret-key"})
            assert basic.status_code == 401
            ok = await http.post(path, json=body, headers={"Authorization": "Bearer s3cret-key"})
            assert ok.status_code == 200
        # What docs/security.md says is open: probes, what is served, the metrics, the docs.
        for path in ("/health", "/ready", "/info", "/metrics", "/docs", "/openapi.json"):
            assert (await http.get(path)).status_code == 200


async def test_draining_answers_503(app_factory: AppFactory) -> None:
    app = app_factory()
    async with asgi_client(app) as http:
        assert (await http.get("/ready")).status_code == 200
        app.state.lifecycle.begin_draining()
        ready = await http.get("/ready")
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        refused = await http.post("/rerank", json={"query": QUERY, "documents": DOCS})
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "draining"
        assert "retry-after" in refused.headers
        assert (await http.get("/health")).status_code == 200


async def test_overload_is_429_with_retry_after(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    gated = GatedModel(scoring_model)
    app = app_factory(model=gated, max_documents=4, max_queued_pairs=4)
    payload = {"query": QUERY, "documents": DOCS}
    async with asgi_client(app) as http:
        gated.gate.clear()
        # While the worker is held, at most one request is in its hands and one (4 pairs)
        # waits, so the third is refused; nothing accepted can finish before the gate opens.
        sent = [asyncio.create_task(http.post("/rerank", json=payload)) for _ in range(3)]
        done, _ = await asyncio.wait(sent, return_when=asyncio.FIRST_COMPLETED)
        refused = done.pop().result()
        gated.gate.set()
        responses = await asyncio.gather(*sent)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert (error["type"], error["field"], error["limit"]) == ("overloaded", "documents", 4)
    codes = sorted(r.status_code for r in responses)
    assert codes[0] == 200
    assert set(codes) == {200, 429}


async def test_openapi_documents_examples_and_errors(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        operation = spec["paths"][path]["post"]
        assert {"200", "401", "413", "422", "429", "503"} <= set(operation["responses"])
    assert spec["components"]["schemas"]["RerankRequest"]["examples"]
    assert (await client.get("/docs")).status_code == 200


async def test_app_loads_the_model_itself_when_given_none(checkpoint: Path) -> None:
    app = create_app(make_settings(checkpoint, max_length=256))
    async with asgi_client(app) as http:
        assert (await http.get("/ready")).status_code == 200
        info = (await http.get("/info")).json()
        response = await http.post("/rerank", json={"query": QUERY, "documents": DOCS[:2]})
    assert (info["model"], info["max_length"]) == (str(checkpoint), 256)
    assert response.status_code == 200


async def test_prefix_reuse_changes_the_work_not_the_answer(app_factory: AppFactory) -> None:
    payload = {"query": QUERY, "documents": DOCS, "return_documents": True}
    scores: dict[bool, dict[int, float]] = {}
    usage: dict[bool, int] = {}
    reused: dict[bool, float] = {}
    for reuse in (True, False):
        app = app_factory(prefix_reuse=reuse)
        async with asgi_client(app) as http:
            assert (await http.get("/info")).json()["prefix_reuse"] is reuse
            body = (await http.post("/rerank", json=payload)).json()
        scores[reuse] = {r["index"]: r["relevance_score"] for r in body["results"]}
        usage[reuse] = body["usage"]["total_tokens"]
        reused[reuse] = Exposition.of(app.state.metrics.registry).value(
            "reranker_prefix_tokens_reused_total"
        )
    assert scores[True].keys() == scores[False].keys() == set(range(len(DOCS)))
    assert max(abs(scores[True][i] - scores[False][i]) for i in scores[True]) <= 1e-5
    assert usage[True] == usage[False], "billing must not change with an optimisation"
    assert reused[False] == 0
    assert reused[True] > 0

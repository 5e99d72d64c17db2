"""Two models in one process: a request's ``model`` picks one on every route, an unknown name is
a 404 naming the served ones, ``/v1/models`` and ``/info`` list both, metrics are labelled by
model, and scores stay exact for both under concurrent mixed traffic."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from reranker_service.app import create_app, load_options
from reranker_service.engine.loading import load_model
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.settings import Settings
from reranker_service.tiny_checkpoint import CheckpointKind
from tests.support.exposition import scrape
from tests.support.model_card import ModelCardReranker
from tests.support.serving import asgi_client

QUERY = "what is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Gravity is a force that attracts two bodies towards each other.",
    "A reranker orders documents by relevance.",
]


@pytest.fixture(scope="module")
def two_model_settings(
    checkpoint: Path, kind_checkpoint: Callable[[CheckpointKind], Path]
) -> Settings:
    return Settings(
        models=f"qwen={checkpoint},bert={kind_checkpoint('bert')}",
        device="cpu",
        dtype="float32",
        host="127.0.0.1",
        cache_size=0,
    )


@pytest.fixture(scope="module")
def two_models(two_model_settings: Settings) -> dict[str, ServedModel]:
    return {
        spec.name: load_model(load_options(two_model_settings, spec))
        for spec in two_model_settings.model_specs
    }


@pytest.fixture
async def http(
    two_model_settings: Settings, two_models: dict[str, ServedModel]
) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(two_model_settings, models=two_models)) as client:
        yield client


def bert_reference(kind_checkpoint: Callable[[CheckpointKind], Path], query: str) -> list[float]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(kind_checkpoint("bert")), max_length=512, device="cpu")
    return [float(score) for score in model.predict([(query, d) for d in DOCUMENTS])]


async def scores_of(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[float]:
    response = await http.post(path, json=body)
    assert response.status_code == 200, response.text
    if path == "/score":
        return [item["score"] for item in response.json()["data"]]
    results = response.json()
    results = results if isinstance(results, list) else results["results"]
    ordered = sorted(results, key=lambda result: result["index"])
    return [result.get("relevance_score", result.get("score")) for result in ordered]


async def test_model_picks_the_model_on_every_route(
    http: httpx.AsyncClient,
    card: ModelCardReranker,
    kind_checkpoint: Callable[[CheckpointKind], Path],
) -> None:
    qwen = card.score_alone(None, QUERY, DOCUMENTS)
    bert = bert_reference(kind_checkpoint, QUERY)
    rerank = {"query": QUERY, "documents": DOCUMENTS}
    score = {"text_1": QUERY, "text_2": DOCUMENTS}
    for path, body in (
        ("/rerank", rerank),
        ("/v1/rerank", rerank),
        ("/v2/rerank", rerank),
        ("/score", score),
    ):
        assert await scores_of(http, path, {**body, "model": "bert"}) == pytest.approx(
            bert, abs=1e-5
        ), path
        assert await scores_of(http, path, {**body, "model": "qwen"}) == pytest.approx(
            qwen, abs=1e-4
        ), path
        # No model: the first, the default.
        assert await scores_of(http, path, body) == pytest.approx(qwen, abs=1e-4), path
    # TEI's shape has no model field: the default answers.
    tei = await scores_of(http, "/rerank", {"query": QUERY, "texts": DOCUMENTS})
    assert tei == pytest.approx(qwen, abs=1e-4)
    answered = await http.post("/v2/rerank", json={**rerank, "model": "bert"})
    assert answered.json()["model"] == "bert"


async def test_an_unknown_model_is_a_404_naming_the_served_ones(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS, "model": "gpt-4"}
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["field"]) == ("model_not_found", "model")
    assert "'qwen', 'bert'" in error["message"]
    metrics = await scrape(http)
    assert metrics.value("reranker_request_errors_total", type="validation", model="") == 1
    assert metrics.value("reranker_request_errors_total", type="validation", model="qwen") == 0


async def test_the_models_are_listed(http: httpx.AsyncClient) -> None:
    listed = (await http.get("/v1/models")).json()
    assert listed["object"] == "list"
    assert [(card["id"], card["object"]) for card in listed["data"]] == [
        ("qwen", "model"),
        ("bert", "model"),
    ]
    assert listed["data"][1]["max_model_len"] == 512
    info = (await http.get("/info")).json()
    assert info["model"] == "qwen"
    kinds = {model["name"]: (model["kind"], model["prefix_reuse"]) for model in info["models"]}
    assert kinds == {"qwen": ("qwen3", True), "bert": ("seq-cls", False)}
    assert all(model["weight_bytes"] > 0 for model in info["models"])


async def test_metrics_carry_the_model(http: httpx.AsyncClient) -> None:
    for model in ("qwen", "bert", "bert"):
        body = {"query": QUERY, "documents": DOCUMENTS, "model": model}
        assert (await http.post("/v2/rerank", json=body)).status_code == 200
    metrics = await scrape(http)
    for model, requests in (("qwen", 1), ("bert", 2)):
        assert metrics.value("reranker_requests_total", status="success", model=model) == requests
        assert metrics.histogram("reranker_top1_score", model=model).count == requests
        assert metrics.histogram("reranker_batch_size", model=model).sum == 3 * requests
    info = {
        sample.labels["model"]: sample.labels for sample in metrics.samples("reranker_model_info")
    }
    assert info["bert"]["kind"] == "seq-cls"
    assert info["qwen"]["checkpoint"].endswith("qwen3-reranker-tiny0")
    assert {sample.labels["model"] for sample in metrics.samples("reranker_queue_depth")} == {
        "qwen",
        "bert",
    }


async def test_scores_stay_exact_under_mixed_concurrent_traffic(
    http: httpx.AsyncClient,
    card: ModelCardReranker,
    kind_checkpoint: Callable[[CheckpointKind], Path],
) -> None:
    """Both models' queues and runners busy at once: each answer is its own model's."""
    rng = random.Random(7)
    queries = [f"{QUERY} {rng.choice(['paris', 'gravity', 'rerankers'])} {i}" for i in range(12)]
    models = ["qwen" if index % 2 else "bert" for index in range(len(queries))]

    async def ask(query: str, model: str) -> list[float]:
        body = {"query": query, "documents": DOCUMENTS, "model": model}
        return await scores_of(http, "/v2/rerank", body)

    answers = await asyncio.gather(*(ask(q, m) for q, m in zip(queries, models, strict=True)))
    for query, model, answer in zip(queries, models, answers, strict=True):
        if model == "qwen":
            assert answer == pytest.approx(card.score_alone(None, query, DOCUMENTS), abs=1e-4)
        else:
            assert answer == pytest.approx(bert_reference(kind_checkpoint, query), abs=1e-5)

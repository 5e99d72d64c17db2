"""Clients written for Cohere's API work with only the base URL changed."""

from __future__ import annotations

import cohere
import httpx
import pytest

from reranker_service.engine.model import Qwen3ScoringModel
from reranker_service.local_server import serve_in_thread
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.conftest import AppFactory

QUERY = "What is the capital of the United States?"
DOCS = [
    "Carson City is the capital city of the American state of Nevada.",
    "Washington, D.C. is the capital of the United States.",
    "Capital punishment has existed in the United States since before it was a country.",
]


def _expected(model: Qwen3ScoringModel) -> list[float]:
    return [model.score(model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, [d]))[0] for d in DOCS]


def test_cohere_v1_and_v2_sdks(app_factory: AppFactory, scoring_model: Qwen3ScoringModel) -> None:
    expected = _expected(scoring_model)
    best_two = sorted(range(len(DOCS)), key=lambda i: -expected[i])[:2]
    with serve_in_thread(app_factory(api_key="sdk-key")) as base_url:
        v1 = cohere.Client(api_key="sdk-key", base_url=base_url, timeout=30)
        answer = v1.rerank(
            model="rerank-english-v3.0",
            query=QUERY,
            documents=DOCS,
            top_n=2,
            return_documents=True,
        )
        assert [r.index for r in answer.results] == best_two
        for result in answer.results:
            assert result.relevance_score == pytest.approx(expected[result.index], abs=1e-5)
            assert result.document is not None
            assert result.document.text == DOCS[result.index]

        v2 = cohere.ClientV2(api_key="sdk-key", base_url=base_url, timeout=30)
        answer2 = v2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=2)
        assert [r.index for r in answer2.results] == best_two
        assert answer2.meta is not None
        assert answer2.meta.api_version is not None
        assert answer2.meta.api_version.version == "2"

        wrong_key = cohere.ClientV2(api_key="nope", base_url=base_url, timeout=30)
        with pytest.raises(cohere.core.ApiError) as refused:
            wrong_key.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
        assert refused.value.status_code == 401


def test_jina_shaped_request(app_factory: AppFactory, scoring_model: Qwen3ScoringModel) -> None:
    expected = _expected(scoring_model)
    with serve_in_thread(app_factory()) as base_url:
        response = httpx.post(
            f"{base_url}/v1/rerank",
            json={
                "model": "jina-reranker-v2-base-multilingual",
                "query": QUERY,
                "documents": DOCS,
                "top_n": 3,
                "return_documents": True,
            },
            timeout=30,
        )
    body = response.json()
    assert body["usage"]["total_tokens"] > 0
    for result in body["results"]:
        assert result["document"]["text"] == DOCS[result["index"]]
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)

"""Clients written for Cohere's API work with only the base URL changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cohere
import httpx
import pytest
from fastapi import FastAPI

from reranker_service.app import create_app, load_options
from reranker_service.engine.loading import load_model
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION, Settings
from reranker_service.tiny_checkpoint import CheckpointKind
from tests.support.local_server import serve_in_thread
from tests.support.model_card import ModelCardReranker
from tests.support.serving import AppFactory, logits

QUERY = "What is the capital of the United States?"
DOCS = [
    "Carson City is the capital city of the American state of Nevada.",
    "Washington, D.C. is the capital of the United States.",
    "Capital punishment has existed in the United States since before it was a country.",
]


def _expected(model: ServedModel) -> list[float]:
    return [
        probability(logits(model, model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, [d]))[0])
        for d in DOCS
    ]


def test_cohere_v1_and_v2_sdks(app_factory: AppFactory, scoring_model: ServedModel) -> None:
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


def test_jina_shaped_request(app_factory: AppFactory, scoring_model: ServedModel) -> None:
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


def test_cohere_v2_sdk_cuts_documents_with_max_tokens_per_doc(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    long_document = " ".join(DOCS) * 4
    with serve_in_thread(app_factory()) as base_url:
        v2 = cohere.ClientV2(api_key="any", base_url=base_url, timeout=30)
        cut = v2.rerank(
            model="rerank-v3.5", query=QUERY, documents=[long_document], max_tokens_per_doc=8
        )
        whole = v2.rerank(model="rerank-v3.5", query=QUERY, documents=[long_document])
    assert cut.meta is not None
    assert whole.meta is not None
    assert cut.meta.billed_units is not None
    assert whole.meta.billed_units is not None
    cut_tokens, whole_tokens = (
        cut.meta.billed_units.input_tokens,
        whole.meta.billed_units.input_tokens,
    )
    assert cut_tokens is not None
    assert whole_tokens is not None
    assert whole_tokens - cut_tokens > 50
    assert cut.results[0].relevance_score != whole.results[0].relevance_score


def test_llama_index_tei_postprocessor(app_factory: AppFactory, scoring_model: ServedModel) -> None:
    """LlamaIndex's TEI rerank postprocessor, pointed at this service's base URL."""
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    expected = _expected(scoring_model)
    nodes = [NodeWithScore(node=TextNode(text=document), score=0.0) for document in DOCS]
    with serve_in_thread(app_factory(api_key="tei-key")) as base_url:
        reranker = TextEmbeddingInference(base_url=base_url, top_n=2, auth_token="Bearer tei-key")
        ranked = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    best_two = sorted(range(len(DOCS)), key=lambda i: -expected[i])[:2]
    assert [DOCS.index(node.node.get_content()) for node in ranked] == best_two
    for node in ranked:
        score = node.score
        assert score is not None
        assert score == pytest.approx(expected[DOCS.index(node.node.get_content())], abs=1e-5)


def test_langchain_cohere_rerank(app_factory: AppFactory, scoring_model: ServedModel) -> None:
    """LangChain's ``CohereRerank`` document compressor with ``base_url``."""
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    expected = _expected(scoring_model)
    with serve_in_thread(app_factory(api_key="lc-key")) as base_url:
        reranker = CohereRerank(
            cohere_api_key="lc-key",
            base_url=base_url,
            model="rerank-v3.5",
            top_n=2,
        )
        ranked = reranker.compress_documents(
            [Document(page_content=document) for document in DOCS], QUERY
        )
    best_two = sorted(range(len(DOCS)), key=lambda i: -expected[i])[:2]
    assert [DOCS.index(document.page_content) for document in ranked] == best_two
    for document in ranked:
        score = document.metadata["relevance_score"]
        assert score == pytest.approx(expected[DOCS.index(document.page_content)], abs=1e-5)


@pytest.fixture(scope="module")
def every_kind_app(
    checkpoint: Path, kind_checkpoint: Callable[[CheckpointKind], Path]
) -> Callable[[], FastAPI]:
    """One service with a model of each kind: the causal Qwen3 reranker (the default), its
    seq-cls form, and the three cross-encoders."""
    kinds: tuple[CheckpointKind, ...] = ("qwen3-seq-cls", "bert", "xlm-roberta", "modernbert")
    named = [f"qwen3={checkpoint}", *(f"{kind}={kind_checkpoint(kind)}" for kind in kinds)]
    settings = Settings(
        models=",".join(named), device="cpu", dtype="float32", host="127.0.0.1", cache_size=0
    )
    models = {spec.name: load_model(load_options(settings, spec)) for spec in settings.model_specs}
    return lambda: create_app(settings, models=models)


def _reference(kind: str, path: Path, card: ModelCardReranker) -> list[float]:
    """The model card's P(yes) for the Qwen3 forms; ``CrossEncoder.predict`` for the others."""
    if kind.startswith("qwen3"):
        return card.score_alone(None, QUERY, DOCS)
    from sentence_transformers import CrossEncoder

    encoder = CrossEncoder(str(path), max_length=512, device="cpu")
    return [float(score) for score in encoder.predict([(QUERY, document) for document in DOCS])]


def test_every_kind_through_the_cohere_v2_and_litellm_clients(
    every_kind_app: Callable[[], FastAPI],
    checkpoint: Path,
    kind_checkpoint: Callable[[CheckpointKind], Path],
    card: ModelCardReranker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each kind's scores, picked by ``model``, through Cohere's v2 SDK and LiteLLM's rerank
    (its cohere provider, which sends the name after ``cohere/``); a name not served is a 404
    to both."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of prices at import
    import litellm

    paths = {"qwen3": checkpoint} | {
        kind: kind_checkpoint(kind)
        for kind in ("qwen3-seq-cls", "bert", "xlm-roberta", "modernbert")
    }
    with serve_in_thread(every_kind_app()) as base_url:
        cohere_v2 = cohere.ClientV2(api_key="unused", base_url=base_url, timeout=30)
        for kind, path in paths.items():
            expected = _reference(kind, path, card)
            by_cohere = cohere_v2.rerank(model=kind, query=QUERY, documents=DOCS)
            by_litellm = litellm.rerank(
                model=f"cohere/{kind}", query=QUERY, documents=DOCS, api_base=base_url, api_key="x"
            )
            answers = {
                "cohere": {result.index: result.relevance_score for result in by_cohere.results},
                "litellm": {
                    result["index"]: result["relevance_score"] for result in by_litellm.results
                },
            }
            for client, scores in answers.items():
                assert [scores[index] for index in range(len(DOCS))] == pytest.approx(
                    expected, abs=1e-4 if kind.startswith("qwen3") else 1e-5
                ), (kind, client)
        with pytest.raises(cohere.core.ApiError) as refused:
            cohere_v2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
        assert refused.value.status_code == 404
        with pytest.raises(litellm.exceptions.NotFoundError):
            litellm.rerank(
                model="cohere/rerank-v3.5",
                query=QUERY,
                documents=DOCS,
                api_base=base_url,
                api_key="x",
            )

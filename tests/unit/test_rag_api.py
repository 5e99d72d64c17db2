"""What RAG stacks send: cut documents, long documents as windows, raw scores, TEI's shape and
vLLM's /score; every score against the model card's own computation."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from reranker_service.engine.runner.protocol import ServedModel
from tests.support.exposition import scrape
from tests.support.model_card import ModelCardReranker
from tests.support.serving import SMALL_MAX_LENGTH, AppFactory, PassRecorder, asgi_client

TOLERANCE = 1e-5
QUERY = "What is the capital of France?"
SHORT = "Paris is the capital of France."
LONG = " ".join(f"sentence {n} about rivers, mountains and the capital city." for n in range(60))


def _cut(card: ModelCardReranker, document: str, tokens: int) -> str:
    """The document after its first ``tokens`` tokens, at that token's last character."""
    encoding = card.tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    return document if len(offsets) <= tokens else document[: offsets[tokens - 1][1]]


def _windows(card: ModelCardReranker, query: str, document: str, limit: int) -> list[str]:
    """The documented windows, written out from the card's tokenizer: the document, then what
    follows the last token the card's truncation kept, leading whitespace dropped."""
    budget = card.max_length - len(card.prefix_tokens) - len(card.suffix_tokens)
    header = len(card.format_instruction(None, query, ""))
    windows = [document]
    while len(windows) < limit:
        text = card.format_instruction(None, query, windows[-1])
        offsets = card.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        if len(offsets) <= budget:
            break
        rest = windows[-1][offsets[budget - 1][1] - header :].lstrip()
        if not rest:
            break
        windows.append(rest)
    return windows


def _scores(response: httpx.Response) -> dict[int, float]:
    assert response.status_code == 200, response.text
    return {result["index"]: result["relevance_score"] for result in response.json()["results"]}


async def _post(app_factory: AppFactory, path: str, body: dict[str, Any], **settings: Any) -> Any:
    async with asgi_client(app_factory(**settings)) as http:
        return await http.post(path, json=body)


async def test_max_tokens_per_doc_scores_the_cut_document(
    app_factory: AppFactory, card: ModelCardReranker
) -> None:
    body = {"query": QUERY, "documents": [LONG, SHORT], "max_tokens_per_doc": 20}
    response = await _post(app_factory, "/v2/rerank", body)
    expected = card.score_alone(None, QUERY, [_cut(card, LONG, 20), SHORT])
    served = _scores(response)
    assert abs(served[0] - expected[0]) <= TOLERANCE
    assert abs(served[1] - expected[1]) <= TOLERANCE
    assert _cut(card, LONG, 20) != LONG
    assert _cut(card, SHORT, 20) == SHORT


async def test_a_long_document_is_the_best_of_its_windows(
    app_factory: AppFactory, short_card: ModelCardReranker, short_scoring_model: ServedModel
) -> None:
    windows = _windows(short_card, QUERY, LONG, 4)
    assert len(windows) == 4, "the document must need more windows than it gets"
    recorder = PassRecorder(short_scoring_model)
    body = {"query": QUERY, "documents": [SHORT, LONG], "max_chunks_per_doc": 4}
    app = app_factory(model=recorder, max_length=SMALL_MAX_LENGTH)
    async with asgi_client(app) as http:
        response = await http.post("/v1/rerank", json=body)
        exposition = await scrape(http)
    served = _scores(response)
    per_window = short_card.score_alone(None, QUERY, windows)
    assert abs(served[1] - max(per_window)) <= TOLERANCE
    # The first window is the model card's truncated pair; a document that fits is unchanged.
    assert abs(served[0] - short_card.score_alone(None, QUERY, [SHORT])[0]) <= TOLERANCE
    counts = [short_card.token_count(None, QUERY, text) for text in [SHORT, *windows]]
    assert response.json()["usage"]["total_tokens"] == sum(counts)
    assert (
        sorted(len(ids) for batch in recorder.passes for ids in batch)[-5:] == sorted(counts)[-5:]
    )
    windows_metric = exposition.histogram("reranker_document_windows")
    assert (windows_metric.count, windows_metric.sum) == (2, 5)


async def test_without_max_chunks_a_long_document_is_truncated_as_before(
    app_factory: AppFactory, short_card: ModelCardReranker, short_scoring_model: ServedModel
) -> None:
    body = {"query": QUERY, "documents": [LONG]}
    response = await _post(
        app_factory, "/rerank", body, model=short_scoring_model, max_length=SMALL_MAX_LENGTH
    )
    assert abs(_scores(response)[0] - short_card.score_alone(None, QUERY, [LONG])[0]) <= TOLERANCE


async def test_raw_scores_are_the_logit_difference(
    app_factory: AppFactory, card: ModelCardReranker
) -> None:
    documents = [SHORT, "Berlin is the capital of Germany.", LONG]
    async with asgi_client(app_factory()) as http:
        raw = await http.post(
            "/rerank", json={"query": QUERY, "documents": documents, "raw_scores": True}
        )
        plain = await http.post("/rerank", json={"query": QUERY, "documents": documents})
    raw_scores, plain_scores = _scores(raw), _scores(plain)
    reference = card.raw_alone(None, QUERY, documents)
    for index, logit in enumerate(reference):
        assert abs(raw_scores[index] - logit) <= 1e-4
        assert abs(1 / (1 + math.exp(-raw_scores[index])) - plain_scores[index]) <= TOLERANCE
    order = [result["index"] for result in raw.json()["results"]]
    assert order == [result["index"] for result in plain.json()["results"]]


async def test_tei_shape_as_documented(app_factory: AppFactory, card: ModelCardReranker) -> None:
    """TEI's documented request and its ``[{index, score, text?}]`` answer, best first."""
    texts = ["Deep Learning is ...", "Paris is a city.", "Neural networks learn."]
    async with asgi_client(app_factory()) as http:
        plain = await http.post("/rerank", json={"query": "What is Deep Learning?", "texts": texts})
        full = await http.post(
            "/rerank",
            json={
                "query": "What is Deep Learning?",
                "texts": texts,
                "raw_scores": True,
                "return_text": True,
                "truncate": True,
                "truncation_direction": "Right",
            },
        )
    assert plain.status_code == 200
    ranks = plain.json()
    assert isinstance(ranks, list)
    assert all(set(rank) == {"index", "score"} for rank in ranks)
    assert [rank["score"] for rank in ranks] == sorted(
        (rank["score"] for rank in ranks), reverse=True
    )
    expected = card.score_alone(None, "What is Deep Learning?", texts)
    assert all(abs(rank["score"] - expected[rank["index"]]) <= TOLERANCE for rank in ranks)
    raw = full.json()
    assert all(set(rank) == {"index", "score", "text"} for rank in raw)
    assert all(rank["text"] == texts[rank["index"]] for rank in raw)
    logits = card.raw_alone(None, "What is Deep Learning?", texts)
    assert all(abs(rank["score"] - logits[rank["index"]]) <= 1e-4 for rank in raw)


async def test_tei_refuses_an_over_long_text_when_told_not_to_truncate(
    app_factory: AppFactory, short_scoring_model: ServedModel
) -> None:
    body = {"query": QUERY, "texts": [SHORT, LONG], "truncate": False}
    response = await _post(
        app_factory, "/rerank", body, model=short_scoring_model, max_length=SMALL_MAX_LENGTH
    )
    assert response.status_code == 413
    assert response.json()["error_type"] == "validation"
    assert set(response.json()) == {"error", "error_type"}
    assert str(SMALL_MAX_LENGTH) in response.json()["error"]


async def test_tei_left_truncation_keeps_the_end_of_a_text(
    app_factory: AppFactory, short_card: ModelCardReranker, short_scoring_model: ServedModel
) -> None:
    body = {"query": QUERY, "texts": [LONG], "truncation_direction": "Left"}
    response = await _post(
        app_factory, "/rerank", body, model=short_scoring_model, max_length=SMALL_MAX_LENGTH
    )
    [rank] = response.json()
    # The longest end of the text that fits, cut where one of its tokens ends (the card's
    # own tokenizer), leading whitespace dropped.
    budget = short_card.max_length - len(short_card.prefix_tokens) - len(short_card.suffix_tokens)
    ends = [
        end
        for _, end in short_card.tokenizer(
            LONG, add_special_tokens=False, return_offsets_mapping=True
        )["offset_mapping"]
    ]

    def fits(text: str) -> bool:
        pair = short_card.format_instruction(None, QUERY, text)
        return len(short_card.tokenizer(pair, add_special_tokens=False)["input_ids"]) <= budget

    start = next(end for end in ends if fits(LONG[end:].lstrip()))
    expected = short_card.score_alone(None, QUERY, [LONG[start:].lstrip()])[0]
    cut_end = short_card.score_alone(None, QUERY, [LONG])[0]
    assert abs(rank["score"] - expected) <= TOLERANCE
    assert abs(rank["score"] - cut_end) > TOLERANCE


async def test_tei_errors_come_in_tei_shape(app_factory: AppFactory) -> None:
    async with asgi_client(app_factory()) as http:
        missing = await http.post("/rerank", json={"texts": ["a"]})
        wrong = await http.post("/rerank", json={"query": "q", "texts": "not a list"})
    for response in (missing, wrong):
        assert response.status_code == 422
        assert set(response.json()) == {"error", "error_type"}
        assert response.json()["error_type"] == "validation"


async def test_every_error_of_a_tei_request_comes_in_tei_shape(app_factory: AppFactory) -> None:
    """Those refused before the body is validated too: the key, the content type, readiness."""
    app = app_factory(api_key="k")
    tei = {"query": "q", "texts": ["a"]}
    key = {"Authorization": "Bearer k"}
    async with asgi_client(app) as http:
        answers = {
            "unauthorized": await http.post("/rerank", json=tei),
            "unsupported_media_type": await http.post(
                "/rerank",
                content=json.dumps(tei),
                headers={**key, "Content-Type": "text/plain"},
            ),
        }
        app.state.lifecycle.begin_draining()
        answers["draining"] = await http.post("/rerank", json=tei, headers=key)
        cohere = await http.post("/rerank", json={"query": "q", "documents": ["a"]})
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {"unauthorized": 401, "unsupported_media_type": 415, "draining": 503}
    for response in answers.values():
        assert set(response.json()) == {"error", "error_type"}, response.json()
    assert answers["draining"].json()["error_type"] == "unhealthy"
    assert cohere.json()["error"]["type"] == "unauthorized"  # Cohere's shape for Cohere's body


async def test_score_pairs_each_with_its_own_query(
    app_factory: AppFactory, card: ModelCardReranker
) -> None:
    queries = ["What is the capital of France?", "Where is Berlin?"]
    documents = [SHORT, "Berlin is the capital of Germany."]
    async with asgi_client(app_factory()) as http:
        paired = await http.post("/score", json={"text_1": queries, "text_2": documents})
        one = await http.post("/score", json={"text_1": queries[0], "text_2": documents})
    assert paired.status_code == one.status_code == 200
    body = paired.json()
    assert set(body) >= {"id", "data", "usage"}
    assert [item["index"] for item in body["data"]] == [0, 1]
    for index, (query, document) in enumerate(zip(queries, documents, strict=True)):
        expected = card.score_alone(None, query, [document])[0]
        assert abs(body["data"][index]["score"] - expected) <= TOLERANCE
    expected_one = card.score_alone(None, queries[0], documents)
    assert all(
        abs(item["score"] - expected_one[item["index"]]) <= TOLERANCE for item in one.json()["data"]
    )
    tokens = sum(card.token_count(None, q, d) for q, d in zip(queries, documents, strict=True))
    assert body["usage"]["total_tokens"] == tokens


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v2/rerank",
            {"query": "q", "documents": ["a"], "max_tokens_per_doc": 0},
            "max_tokens_per_doc",
        ),
        (
            "/v1/rerank",
            {"query": "q", "documents": ["a"], "max_chunks_per_doc": 0},
            "max_chunks_per_doc",
        ),
        (
            "/v1/rerank",
            {"query": "q", "documents": ["a"], "max_chunks_per_doc": 17},
            "max_chunks_per_doc",
        ),
        ("/rerank", {"query": "q", "documents": ["a"], "texts": ["b"]}, "texts"),
        ("/score", {"text_1": ["q1", "q2"], "text_2": ["a", "b", "c"]}, "text_1"),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_nothing_is_scored(
    app_factory: AppFactory,
    scoring_model: ServedModel,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    recorder = PassRecorder(scoring_model)
    async with asgi_client(app_factory(model=recorder)) as http:
        recorder.passes.clear()  # the warm-up's
        response = await http.post(path, json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert recorder.passes == []


async def test_too_many_windows_is_413_before_anything_is_scored(
    app_factory: AppFactory, short_scoring_model: ServedModel
) -> None:
    recorder = PassRecorder(short_scoring_model)
    app = app_factory(model=recorder, max_length=SMALL_MAX_LENGTH, max_documents=2)
    async with asgi_client(app) as http:
        recorder.passes.clear()
        info = (await http.get("/info")).json()
        response = await http.post(
            "/v1/rerank", json={"query": QUERY, "documents": [LONG, LONG], "max_chunks_per_doc": 3}
        )
    assert info["max_request_pairs"] == 2
    assert response.status_code == 413
    assert response.json()["error"]["limit"] == 2
    assert recorder.passes == []


async def test_the_openapi_schema_shows_every_new_field_with_an_example(
    client: httpx.AsyncClient,
) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    new_fields = {
        "RerankRequest": ["max_tokens_per_doc", "max_chunks_per_doc", "raw_scores"],
        "TeiRerankRequest": [
            "query",
            "texts",
            "raw_scores",
            "return_text",
            "truncate",
            "truncation_direction",
        ],
        "ScoreRequest": ["text_1", "text_2", "instruction", "max_tokens_per_doc", "raw_scores"],
    }
    for schema, fields in new_fields.items():
        properties = schemas[schema]["properties"]
        for field in fields:
            assert properties[field].get("examples"), f"{schema}.{field} has no example"
            assert properties[field].get("description"), f"{schema}.{field} has no description"

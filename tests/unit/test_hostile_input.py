"""Whatever a client sends, the answer is a 4xx with a JSON body that names the problem, or a
200; never a 5xx, and never memory in proportion to what was sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from reranker_service.engine.runner.protocol import ServedModel
from tests.support.serving import SMALL_MAX_LENGTH, AppFactory, asgi_client

OK_DOCS = '"documents":["a","b"]'

CASES: dict[str, tuple[bytes, int, str]] = {
    # name: (body, status, error type)
    "not json": (b"{query: 'q'}", 400, "invalid_json"),
    "truncated json": (b'{"query":"q","documents":["a"', 400, "invalid_json"),
    "nested 100 000 deep": (
        b'{"query":"q","documents":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        "invalid_json",
    ),
    "integer of 5 000 digits": (
        b'{"query":"q",' + OK_DOCS.encode() + b',"top_n":' + b"9" * 5000 + b"}",
        400,
        "invalid_json",
    ),
    "not utf-8": (b'{"query":"\xff\xfe",' + OK_DOCS.encode() + b"}", 400, "invalid_json"),
    "lone surrogate": (b'{"query":"\\ud800",' + OK_DOCS.encode() + b"}", 422, "validation"),
    "1e400": (b'{"query":"q",' + OK_DOCS.encode() + b',"top_n":1e400}', 422, "validation"),
    "NaN": (b'{"query":"q",' + OK_DOCS.encode() + b',"top_n":NaN}', 422, "validation"),
    "negative top_n": (b'{"query":"q",' + OK_DOCS.encode() + b',"top_n":-1}', 422, "validation"),
    "fractional top_n": (b'{"query":"q",' + OK_DOCS.encode() + b',"top_n":1.5}', 422, "validation"),
    "query is a list": (b'{"query":["q"],' + OK_DOCS.encode() + b"}", 422, "validation"),
    "documents is an object": (b'{"query":"q","documents":{"a":1}}', 422, "validation"),
    "document without text": (b'{"query":"q","documents":[{"title":"t"}]}', 422, "validation"),
    "document text is a number": (b'{"query":"q","documents":[{"text":5}]}', 422, "validation"),
    "document is null": (b'{"query":"q","documents":[null]}', 422, "validation"),
    "empty query": (b'{"query":"",' + OK_DOCS.encode() + b"}", 422, "validation"),
    "empty body": (b"", 422, "validation"),
    "array body": (b"[]", 422, "validation"),
    "null body": (b"null", 422, "validation"),
}


@pytest.fixture
async def http(
    app_factory: AppFactory, short_scoring_model: ServedModel
) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app_factory(model=short_scoring_model)) as client:
        yield client


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_bodies_get_a_4xx_naming_the_problem(http: httpx.AsyncClient, name: str) -> None:
    body, status, error_type = CASES[name]
    response = await http.post(
        "/rerank", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
async def test_bodies_not_sent_as_json_are_415(
    http: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    body = json.dumps({"query": "q", "documents": ["a"]}).encode()
    response = await http.post("/v2/rerank", content=body, headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert (error["type"], error["field"]) == ("unsupported_media_type", "Content-Type")


async def test_json_with_parameters_or_a_suffix_is_accepted(http: httpx.AsyncClient) -> None:
    body = json.dumps({"query": "q", "documents": ["a"]}).encode()
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        response = await http.post("/rerank", content=body, headers={"content-type": content_type})
        assert response.status_code == 200, content_type


async def test_odd_text_is_scored(http: httpx.AsyncClient) -> None:
    documents = [
        "\x00\x00 nul bytes",
        "\u202e right-to-left override",
        "zero\u200bwidth\ufeffspaces",
        "emoji 👩‍👩‍👧‍👦 and combining e\u0301",
        "\U0010fffd last plane, \ud7ff\ue000 around the surrogates",
        "\t\n\r",
        " ",
    ]
    response = await http.post("/rerank", json={"query": "\x00?", "documents": documents})
    assert response.status_code == 200
    assert sorted(r["index"] for r in response.json()["results"]) == list(range(len(documents)))


async def test_huge_texts_are_truncated_not_held(http: httpx.AsyncClient) -> None:
    # 4 MB of document and 1 MB of query, within the body limit: each pair is cut to
    # max_length; the tokenizer's work grows with the text, bounded by the body limit.
    response = await http.post(
        "/rerank",
        json={"query": "why " * 250_000, "documents": ["word " * 800_000, "short"]},
    )
    assert response.status_code == 200
    assert response.json()["usage"]["total_tokens"] == 2 * SMALL_MAX_LENGTH

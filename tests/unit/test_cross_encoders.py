"""The rerankers teams already run: sequence-classification cross-encoders score as
sentence-transformers' ``CrossEncoder.predict`` does on the same checkpoint, and Qwen3-Reranker's
sequence-classification form as the model card does on the causal checkpoint it was made from;
each over HTTP, through the same app, scheduler and wire formats as the causal form."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from reranker_service.app import create_app
from reranker_service.tiny_checkpoint import CheckpointKind
from tests.support.model_card import ModelCardReranker
from tests.support.serving import asgi_client, make_settings

QUERY = "what is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Gravity is a force that attracts two bodies towards each other.",
    "",
    "the quick brown fox jumps over the lazy dog " * 80,
    "中文 🙂 yes",
]
ENCODER_KINDS: tuple[CheckpointKind, ...] = ("bert", "xlm-roberta", "modernbert")
FP32_BOUND = 1e-5
BF16_BOUND = 0.02
"""docs/api.md's bound for bf16 against fp32 (as for Qwen3-Reranker)."""


@pytest.fixture(scope="module")
def kinds(kind_checkpoint: Callable[[CheckpointKind], Path]) -> dict[str, Path]:
    return {kind: kind_checkpoint(kind) for kind in (*ENCODER_KINDS, "qwen3-seq-cls")}


def cross_encoder_scores(
    path: Path, max_length: int, documents: list[str], *, raw: bool = False
) -> list[float]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(path), max_length=max_length, device="cpu")
    options: dict[str, Any] = {"activation_fn": torch.nn.Identity()} if raw else {}
    scores = model.predict([(QUERY, document) for document in documents], **options)
    return [float(score) for score in scores]


async def rerank(http: httpx.AsyncClient, **body: Any) -> list[float]:
    response = await http.post("/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS, **body})
    assert response.status_code == 200, response.text
    results = sorted(response.json()["results"], key=lambda result: result["index"])
    return [result["relevance_score"] for result in results]


def largest_difference(ours: list[float], reference: list[float]) -> float:
    return max(abs(a - b) for a, b in zip(ours, reference, strict=True))


@pytest.mark.parametrize("kind", ENCODER_KINDS)
async def test_a_cross_encoder_scores_as_crossencoder_predict(
    kinds: dict[str, Path], kind: str
) -> None:
    """P = sigmoid(logit) as ``relevance_score``, the logit as the raw score, in fp32 to float
    rounding; the long document cut as its tokenizer cuts a pair (``longest_first``)."""
    app = create_app(make_settings(kinds[kind]))
    async with asgi_client(app) as http:
        info = (await http.get("/info")).json()
        max_length = info["max_length"]
        ours = await rerank(http)
        raw = await rerank(http, raw_scores=True)
    reference = cross_encoder_scores(kinds[kind], max_length, DOCUMENTS)
    assert largest_difference(ours, reference) <= FP32_BOUND
    raw_reference = cross_encoder_scores(kinds[kind], max_length, DOCUMENTS, raw=True)
    assert largest_difference(raw, raw_reference) <= FP32_BOUND
    assert len({round(score, 4) for score in reference}) == len(reference), "distinct scores"
    [model] = info["models"]
    assert (model["kind"], model["prefix_reuse"], model["takes_instruction"]) == (
        "seq-cls",
        False,
        False,
    )


async def test_bert_reads_the_document_as_its_second_segment(kinds: dict[str, Path]) -> None:
    """BERT's token types reach the model (type 1 for the document): scored without them, as
    if the pair were one segment, the scores differ, and ours are CrossEncoder's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = kinds["bert"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    encoded = tokenizer(QUERY, DOCUMENTS[0], return_tensors="pt")
    assert encoded["token_type_ids"].max() == 1
    with torch.inference_mode():
        one_segment = model(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).logits[0, 0]
    app = create_app(make_settings(path))
    async with asgi_client(app) as http:
        [ours, *_] = await rerank(http, raw_scores=True)
    assert abs(ours - float(one_segment)) > 1e-3
    assert abs(ours - cross_encoder_scores(path, 512, DOCUMENTS[:1], raw=True)[0]) <= FP32_BOUND


async def test_a_cross_encoder_in_bf16_stays_within_the_bound(kinds: dict[str, Path]) -> None:
    app = create_app(make_settings(kinds["xlm-roberta"], dtype="bfloat16"))
    async with asgi_client(app) as http:
        ours = await rerank(http)
    reference = cross_encoder_scores(kinds["xlm-roberta"], 512, DOCUMENTS)
    assert largest_difference(ours, reference) <= BF16_BOUND


async def test_a_cross_encoder_refuses_an_instruction_and_serves_every_shape(
    kinds: dict[str, Path],
) -> None:
    """No prompt, so an instruction is a 422 rather than ignored; TEI's shape, vLLM's /score,
    windows and max_tokens_per_doc all serve it, the score cache included."""
    app = create_app(make_settings(kinds["bert"], cache_size=1000))
    async with asgi_client(app) as http:
        refused = await http.post(
            "/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS, "instruction": "Judge"}
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "instruction"
        ours = await rerank(http)
        again = await http.post("/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS})
        assert again.headers["x-reranker-cache"] == "hit"
        tei = await http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS})
        assert tei.status_code == 200
        assert {rank["index"]: rank["score"] for rank in tei.json()} == pytest.approx(
            dict(enumerate(ours)), abs=FP32_BOUND
        )
        score = await http.post("/score", json={"text_1": QUERY, "text_2": DOCUMENTS})
        assert [item["score"] for item in score.json()["data"]] == pytest.approx(
            ours, abs=FP32_BOUND
        )
        windows = await http.post(
            "/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "max_chunks_per_doc": 4}
        )
        cut = await rerank(http, max_tokens_per_doc=5)
    assert windows.status_code == 200
    windowed = {result["index"]: result["relevance_score"] for result in windows.json()["results"]}
    # The long document's first window is the one pair a single window scores: the best of
    # several is at least its score; every other document is one window, scored the same.
    assert windowed[3] >= ours[3] - FP32_BOUND
    assert [windowed[i] for i in (0, 1, 2, 4)] == pytest.approx(
        [ours[i] for i in (0, 1, 2, 4)], abs=FP32_BOUND
    )
    # max_tokens_per_doc cuts the document's own tokens, at the end of the fifth's characters.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(kinds["bert"])
    offsets = tokenizer(DOCUMENTS[3], add_special_tokens=False, return_offsets_mapping=True)
    first_five = DOCUMENTS[3][: offsets["offset_mapping"][4][1]]
    assert cut[3] == pytest.approx(
        cross_encoder_scores(kinds["bert"], 512, [first_five])[0], abs=FP32_BOUND
    )


async def test_the_seq_cls_form_of_qwen3_scores_as_the_model_card(
    kinds: dict[str, Path], card: ModelCardReranker, tmp_path: Path
) -> None:
    """Detected from the checkpoint (copied under a name that says nothing), served with the
    Qwen3 prompt and shared-prefix reuse, on the padded and the packed runner: the causal
    checkpoint's card scores within 1e-4 in fp32."""
    renamed = Path(shutil.copytree(kinds["qwen3-seq-cls"], tmp_path / "my-reranker"))
    reference = card.score_alone(None, QUERY, DOCUMENTS)
    for runner in ("padded", "packed"):
        app = create_app(make_settings(renamed, runner=runner))
        async with asgi_client(app) as http:
            info = (await http.get("/info")).json()
            ours = await rerank(http)
            instructed = await http.post(
                "/v2/rerank",
                json={"query": QUERY, "documents": DOCUMENTS[:2], "instruction": "Find it"},
            )
        [model] = info["models"]
        assert (model["kind"], model["prefix_reuse"], model["takes_instruction"]) == (
            "qwen3-seq-cls",
            True,
            True,
        )
        assert largest_difference(ours, reference) <= 1e-4, runner
        assert instructed.status_code == 200
        scores = sorted(instructed.json()["results"], key=lambda result: result["index"])
        assert [result["relevance_score"] for result in scores] == pytest.approx(
            card.score_alone("Find it", QUERY, DOCUMENTS[:2]), abs=1e-4
        )


async def test_the_prompt_can_be_turned_off(kinds: dict[str, Path]) -> None:
    """``RERANKER_PROMPT=none`` serves a Qwen3 sequence classifier as a plain cross-encoder:
    the tokenizer's pair, as ``CrossEncoder`` scores it."""
    path = kinds["qwen3-seq-cls"]
    app = create_app(make_settings(path, prompt="none"))
    async with asgi_client(app) as http:
        info = (await http.get("/info")).json()
        ours = await rerank(http)
    assert info["models"][0]["kind"] == "seq-cls"
    reference = cross_encoder_scores(path, info["max_length"], DOCUMENTS)
    assert largest_difference(ours, reference) <= FP32_BOUND

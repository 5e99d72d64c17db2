"""The CUDA path: bf16 by default, scores still the model card's. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reranker_service.app import load_options
from reranker_service.engine.model import load_scoring_model
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.conftest import make_settings
from tests.model_card import ModelCardReranker

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "", "中文 🙂", "word " * 700]


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-4), ("auto", 2e-2)])
def test_cuda_scores_match_the_model_card(checkpoint: Path, dtype: str, tolerance: float) -> None:
    model = load_scoring_model(load_options(make_settings(checkpoint, device="cuda", dtype=dtype)))
    assert model.description.device.startswith("cuda")
    if dtype == "auto":
        assert model.description.dtype in ("bfloat16", "float16")
    ours = model.score(model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCS))
    reference = ModelCardReranker(checkpoint, 8192).score_alone(None, QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) <= tolerance

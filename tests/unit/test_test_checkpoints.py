"""Each kind of test checkpoint loads as the model it stands for, through the Auto classes and
sentence-transformers' CrossEncoder, with its own tokenizer's pair framing; the Qwen3
sequence-classification form scores as the causal form's logit difference; the CLI writes any
kind and refuses a shape that does not fit."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from reranker_service.tiny_checkpoint import (
    CHECKPOINT_KINDS,
    KIND_RECIPES,
    CheckpointKind,
    build_checkpoint,
    build_kind,
    main,
)
from tests.support.model_card import CARD_INSTRUCTION, CARD_PREFIX, CARD_SUFFIX

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "How do I bake bread at home? Mix flour, water, salt and yeast.",
    "The quick brown fox jumps over the lazy dog.",
]
COMMON_TEXT = (
    "What is the capital of France? Paris is. Why is the sky blue? How do I bake bread at home? "
    "Which document answers the question best, and is it true or false? 42 pages in 2024."
)


@dataclass(frozen=True)
class Framing:
    """What a kind's tokenizer should be: its backend model and how it frames a pair."""

    backend_model: str
    tokenizer_class_prefix: str | None
    """transformers' class for the model (4.x adds ``Fast`` to the name); None: a generic one."""
    opening: tuple[str, ...]
    between: tuple[str, ...]
    closing: tuple[str, ...]
    token_types: bool
    architecture: str


FRAMINGS: dict[CheckpointKind, Framing] = {
    "bert": Framing(
        "WordPiece",
        "BertTokenizer",
        ("[CLS]",),
        ("[SEP]",),
        ("[SEP]",),
        token_types=True,
        architecture="BertForSequenceClassification",
    ),
    "xlm-roberta": Framing(
        "Unigram",
        "XLMRobertaTokenizer",
        ("<s>",),
        ("</s>", "</s>"),
        ("</s>",),
        token_types=False,
        architecture="XLMRobertaForSequenceClassification",
    ),
    "modernbert": Framing(
        "BPE",
        None,
        ("[CLS]",),
        ("[SEP]",),
        ("[SEP]",),
        token_types=False,
        architecture="ModernBertForSequenceClassification",
    ),
    "qwen3-seq-cls": Framing(
        "BPE",
        None,
        (),
        (),
        (),
        token_types=False,
        architecture="Qwen3ForSequenceClassification",
    ),
}
ENCODER_KINDS: tuple[CheckpointKind, ...] = ("bert", "xlm-roberta", "modernbert")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[CheckpointKind, Path]:
    """Each kind but ``qwen3`` (the session's ``checkpoint``), tiny, seed 0, built once."""
    root = tmp_path_factory.mktemp("test-checkpoints")
    return {kind: build_kind(root / kind, kind) for kind in FRAMINGS}


def _tokenizer(path: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path)


def test_every_kind_has_a_recipe_with_a_tiny_shape() -> None:
    assert tuple(KIND_RECIPES) == CHECKPOINT_KINDS
    assert CHECKPOINT_KINDS[0] == "qwen3"
    for recipe in KIND_RECIPES.values():
        assert next(iter(recipe.shapes)) == "tiny"
    assert set(FRAMINGS) | {"qwen3"} == set(CHECKPOINT_KINDS), "a kind this file does not test"


def test_the_qwen3_kind_is_the_checkpoint_of_build_checkpoint(
    checkpoint: Path, tmp_path: Path
) -> None:
    """The same bytes for the same seed: tests that compare scores keep their weights."""
    path = build_kind(tmp_path / "qwen3", "qwen3")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (path / name).read_bytes() == (checkpoint / name).read_bytes(), name
    again = build_checkpoint(tmp_path / "seed-1", seed=1)
    assert (again / "model.safetensors").read_bytes() != (path / "model.safetensors").read_bytes()


@pytest.mark.parametrize("kind", list(FRAMINGS))
def test_the_tokenizer_reloads_fast_with_the_intended_model(
    built: dict[CheckpointKind, Path], kind: CheckpointKind
) -> None:
    framing = FRAMINGS[kind]
    tokenizer = _tokenizer(built[kind])
    assert tokenizer.is_fast
    assert type(tokenizer.backend_tokenizer.model).__name__ == framing.backend_model
    if framing.tokenizer_class_prefix is not None:
        assert type(tokenizer).__name__.startswith(framing.tokenizer_class_prefix)
    assert ("token_type_ids" in tokenizer.model_input_names) == framing.token_types
    config = AutoConfig.from_pretrained(built[kind])
    assert config.architectures == [framing.architecture]
    assert config.num_labels == 1
    assert config.max_position_embeddings >= min(tokenizer.model_max_length, 8192)
    assert config.vocab_size >= len(tokenizer)


@pytest.mark.parametrize("kind", list(FRAMINGS))
def test_a_pair_is_framed_by_the_kind_s_special_tokens(
    built: dict[CheckpointKind, Path], kind: CheckpointKind
) -> None:
    framing = FRAMINGS[kind]
    tokenizer = _tokenizer(built[kind])
    query = tokenizer.encode(QUERY, add_special_tokens=False)
    document = tokenizer.encode(DOCUMENTS[0], add_special_tokens=False)
    encoded = tokenizer(QUERY, DOCUMENTS[0])

    def ids(tokens: tuple[str, ...]) -> list[int]:
        converted = tokenizer.convert_tokens_to_ids(list(tokens))
        assert isinstance(converted, list)
        return converted

    first = ids(framing.opening) + query + ids(framing.between)
    assert encoded["input_ids"] == first + document + ids(framing.closing)
    second = len(encoded["input_ids"]) - len(first)
    if framing.token_types:
        assert encoded["token_type_ids"] == [0] * len(first) + [1] * second
    else:
        assert "token_type_ids" not in encoded
    # What a server reading tokenizer.json alone (TEI, the tokenizers library) gets: the same.
    from_file = Tokenizer.from_file(str(built[kind] / "tokenizer.json")).encode(QUERY, DOCUMENTS[0])
    assert from_file.ids == encoded["input_ids"]
    if kind != "qwen3-seq-cls":  # no pair template: tokenizers' default types, never used
        assert from_file.type_ids == [0] * len(first) + [int(framing.token_types)] * second


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_common_words_are_no_unknown_tokens(
    built: dict[CheckpointKind, Path], kind: CheckpointKind
) -> None:
    tokenizer = _tokenizer(built[kind])
    ids = tokenizer.encode(COMMON_TEXT, add_special_tokens=False)
    assert tokenizer.unk_token_id is not None
    assert tokenizer.unk_token_id not in ids
    decoded = tokenizer.decode(ids)
    assert isinstance(decoded, str)
    assert decoded.replace(" ", "").lower() == COMMON_TEXT.replace(" ", "").lower()


@pytest.mark.parametrize("kind", list(FRAMINGS))
def test_the_crossencoder_scores_pairs_as_probabilities(
    built: dict[CheckpointKind, Path], kind: CheckpointKind
) -> None:
    model = CrossEncoder(str(built[kind]), max_length=256, device="cpu")
    assert type(model.model).__name__ == FRAMINGS[kind].architecture
    scores = [float(score) for score in model.predict([(QUERY, doc) for doc in DOCUMENTS])]
    assert all(math.isfinite(score) and 0.0 < score < 1.0 for score in scores), scores
    assert len(set(scores)) == len(scores), f"random weights should tell documents apart: {scores}"


def test_the_seq_cls_logit_is_the_causal_logit_difference(
    built: dict[CheckpointKind, Path], checkpoint: Path
) -> None:
    """The ``qwen3-seq-cls`` classifier on a Qwen3-prompt text gives the ``qwen3`` kind's
    (same seed) logit(yes) - logit(no) at the last token, in fp32."""
    tokenizer = _tokenizer(checkpoint)
    causal = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(
        built["qwen3-seq-cls"], dtype=torch.float32
    ).eval()
    yes = tokenizer.convert_tokens_to_ids("yes")
    no = tokenizer.convert_tokens_to_ids("no")
    expected, got = [], []
    for document in DOCUMENTS:
        text = f"<Instruct>: {CARD_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: {document}"
        ids = tokenizer(CARD_PREFIX + text + CARD_SUFFIX, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            last = causal(input_ids=ids).logits[0, -1]
            expected.append(float(last[yes] - last[no]))
            got.append(float(classifier(input_ids=ids).logits[0, 0]))
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5, (got, expected)
    assert len({round(value, 4) for value in expected}) == len(expected), "distinct logits"


def test_the_cli_writes_a_bert_checkpoint(tmp_path: Path) -> None:
    directory = tmp_path / "bert"
    code = main([str(directory), "--kind", "bert", "--layers", "1", "--hidden-size", "32"])
    assert code == 0
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (1, 32)
    assert _tokenizer(directory).is_fast


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--kind", "modernbert", "--shape", "base"], "shapes are tiny, not 'base'"),
        (["--kind", "qwen3", "--shape", "base"], "not 'base'"),
        (["--kind", "bert", "--shape", "qwen3-reranker-0.6b"], "not 'qwen3-reranker-0.6b'"),
        (["--kind", "xlm-roberta", "--shape", "base", "--layers", "4"], "change the tiny shape"),
        (["--kind", "bert", "--tie-word-embeddings"], "no LM head"),
        (["--kind", "modernbert", "--hidden-size", "36"], "heads of an even size"),
        (["--kind", "bert", "--layers", "0"], "at least 1"),
        (["--kind", "t5"], "invalid choice"),
    ],
)
def test_a_shape_that_does_not_fit_the_kind_is_a_usage_error(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "model"), *arguments])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_build_kind_refuses_a_shape_the_kind_lacks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny, base"):
        build_kind(tmp_path / "model", "bert", shape="qwen3-reranker-0.6b")

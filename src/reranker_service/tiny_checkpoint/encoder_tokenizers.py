"""The encoder cross-encoders' tokenizers, trained here on ``corpus.ENCODER_LINES`` with the
``tokenizers`` library and wrapped so that ``save_pretrained`` writes what the published models
ship and ``AutoTokenizer`` reloads each as its model's own fast tokenizer:

- BERT: WordPiece, lowercasing ``BertNormalizer``, ``[CLS] A [SEP] B [SEP]`` with token type
  ids 0 then 1;
- XLM-RoBERTa: Unigram over Metaspace pieces, ``<s> A </s> </s> B </s>``, no token types;
- ModernBERT (as gte-reranker-modernbert ships): byte-level BPE, ``[CLS] A [SEP] B [SEP]``, no
  token types.

transformers 5 rebuilds the BERT and XLM-RoBERTa tokenizers' pipelines from their classes and
keeps only the vocabulary of ``tokenizer.json`` (its ``*TokenizerFast`` names, which 4.x needs,
are aliases there, missing from its type hints); the pipelines here are the classes' own, so a
reloaded tokenizer splits text exactly as ``tokenizer.json`` does.
"""

from __future__ import annotations

from string import ascii_letters, digits, punctuation
from typing import TYPE_CHECKING

from reranker_service.tiny_checkpoint.corpus import ENCODER_LINES, repeated

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

_CORPUS_REPEATS = 20
_ALPHABET = list(ascii_letters + digits + punctuation)
"""Characters every vocabulary holds, so that no ASCII word ever becomes the unknown token."""

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""In BERT's order of ids: ``[PAD]`` is 0, BERT's ``pad_token_id``."""
XLM_ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
"""In fairseq's order of ids, as XLM-RoBERTa's: ``<pad>`` is 1 (the position embeddings'
padding index) and ``<unk>`` is 3, the id transformers' XLM-RoBERTa tokenizer assumes."""
MODERNBERT_SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
"""ModernBERT's special tokens, in the order of its ids."""


def wordpiece_tokenizer(vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """BERT's uncased WordPiece tokenizer, reloading as transformers' fast ``BertTokenizer``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BERT_SPECIAL_TOKENS),
        initial_alphabet=sorted({c.lower() for c in _ALPHABET}),
        show_progress=False,
    )
    backend.train_from_iterator(repeated(ENCODER_LINES, _CORPUS_REPEATS), trainer)
    _set_pair_template(backend, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1")
    return BertTokenizerFast(  # type: ignore[no-any-return]
        tokenizer_object=backend, model_max_length=model_max_length
    )


def unigram_tokenizer(vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """XLM-RoBERTa's sentencepiece-style Unigram tokenizer, reloading as transformers' fast
    ``XLMRobertaTokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizerFast  # type: ignore[attr-defined]

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(XLM_ROBERTA_SPECIAL_TOKENS),
        unk_token="<unk>",
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    backend.train_from_iterator(repeated(ENCODER_LINES, _CORPUS_REPEATS), trainer)
    _set_pair_template(backend, "<s> $A </s>", "<s> $A </s> </s> $B </s>")
    return XLMRobertaTokenizerFast(  # type: ignore[no-any-return]
        tokenizer_object=backend, model_max_length=model_max_length
    )


def byte_level_bpe_tokenizer(vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """ModernBERT's byte-level BPE tokenizer, reloading as a generic fast tokenizer whose inputs
    are ids and attention mask only (``ModernBertForSequenceClassification`` takes no token
    types)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(MODERNBERT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(repeated(ENCODER_LINES, _CORPUS_REPEATS), trainer)
    _set_pair_template(backend, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]")
    unk, cls, sep, pad, mask = MODERNBERT_SPECIAL_TOKENS
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        pad_token=pad,
        mask_token=mask,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=model_max_length,
    )


def _set_pair_template(backend: Tokenizer, single: str, pair: str) -> None:
    """Special tokens around one text and around a (query, document) pair, by their trained
    ids; in ``pair``, ``:1`` marks the pieces of token type 1."""
    from tokenizers import processors

    names = {piece.split(":")[0] for piece in f"{single} {pair}".split()}
    special = sorted(name for name in names if not name.startswith("$"))
    backend.post_processor = processors.TemplateProcessing(
        single=single,
        pair=pair,
        special_tokens=[(name, _token_id(backend, name)) for name in special],
    )


def _token_id(backend: Tokenizer, token: str) -> int:
    token_id = backend.token_to_id(token)
    if token_id is None:
        raise RuntimeError(f"the trained vocabulary lacks {token!r}")
    return token_id

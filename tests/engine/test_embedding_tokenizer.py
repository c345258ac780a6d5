"""The pure-Python WordPiece tokenizer gives the reference `tokenizers` ids for the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelhost.engine.embedding import bundled_embedding_model_dir
from modelhost.engine.embedding.wordpiece import TokenizerConfigError, WordPieceTokenizer

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_file(bundled_embedding_model_dir() / "tokenizer.json")


@pytest.mark.parametrize("case", REFERENCE["tokenizer"], ids=lambda c: c["text"][:24])
def test_ids_match_the_reference_tokenizer(tokenizer: WordPieceTokenizer, case: dict) -> None:  # type: ignore[type-arg]
    assert tokenizer.encode(case["text"]) == case["ids"]


def test_frame_wraps_tokens_in_cls_and_sep(tokenizer: WordPieceTokenizer) -> None:
    assert tokenizer.frame(tokenizer.encode("hello world")) == [101, 7592, 2088, 102]


def test_special_token_markup_in_text_is_read_as_text(tokenizer: WordPieceTokenizer) -> None:
    ids = tokenizer.encode("a [SEP] b [CLS]")
    assert tokenizer.sep_id not in ids and tokenizer.cls_id not in ids
    assert ids[:4] == [1037, 1031, 19802, 1033]  # a [ sep ]


def test_words_split_on_punctuation_and_whitespace(tokenizer: WordPieceTokenizer) -> None:
    assert tokenizer.words("Don't\u3000stop—now!") == ["don", "'", "t", "stop", "—", "now", "!"]


def test_a_word_over_the_length_limit_is_unknown(tokenizer: WordPieceTokenizer) -> None:
    assert tokenizer.encode("a" * 101) == [tokenizer.unk_id]


def test_a_tokenizer_that_is_not_bert_wordpiece_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}, "normalizer": None}))
    with pytest.raises(TokenizerConfigError, match="not WordPiece"):
        WordPieceTokenizer.from_file(path)

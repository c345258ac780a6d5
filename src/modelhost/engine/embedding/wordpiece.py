"""BERT's uncased WordPiece tokenizer, read from a Hugging Face ``tokenizer.json``, in plain Python.

It reproduces the `tokenizers` pipeline that file describes — BertNormalizer (clean text, pad CJK
characters, strip accents, lowercase), BertPreTokenizer (split on whitespace and punctuation),
WordPiece (greedy longest match, ``##`` continuations) — so no Rust wheel or hub client is needed.
tests/engine/test_embedding_tokenizer.py checks it against the reference ids.

One deliberate difference: special-token markup in the text (``"[SEP]"``) is read as text, never
as the special token, so a caller cannot inject structure into the model's input.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from pathlib import Path

# Unicode White_Space (what Rust's `char::is_whitespace` tests), tab/newline/return included.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# "Other" categories that clean_text drops; unassigned code points (Cn) are kept, as the reference does.
_CONTROL = frozenset(("Cc", "Cf", "Co", "Cs"))
# clean_text on ASCII: tab, newline and return become spaces, the other control characters go.
_ASCII_CLEAN = {c: (" " if chr(c) in "\t\n\r" else None) for c in [*range(0x20), 0x7F]}
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


class TokenizerConfigError(Exception):
    """The tokenizer file is not a BERT WordPiece tokenizer this module can reproduce."""


def _is_cjk(code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(char: str) -> bool:
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


class WordPieceTokenizer:
    """``WordPieceTokenizer.from_file(path).encode("Hello, world!") -> [7592, 1010, 2088, 999]``.

    `encode` returns the text's tokens without the ``[CLS]``/``[SEP]`` that frame a model input;
    `frame` adds them.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        continuing_prefix: str = "##",
        max_chars_per_word: int = 100,
        lowercase: bool = True,
        strip_accents: bool = True,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
    ) -> None:
        for token in (unk_token, cls_token, sep_token, pad_token):
            assert token in vocab, f"special token {token} is missing from the vocabulary"
        self.vocab = vocab
        self.unk_id = vocab[unk_token]
        self.cls_id = vocab[cls_token]
        self.sep_id = vocab[sep_token]
        self.pad_id = vocab[pad_token]
        self._prefix = continuing_prefix
        self._max_chars = max_chars_per_word
        self._lowercase = lowercase
        self._strip_accents = strip_accents
        self._clean_text = clean_text
        self._chinese = handle_chinese_chars
        self._word_ids = functools.lru_cache(maxsize=65536)(self._wordpiece)

    @classmethod
    def from_file(cls, path: Path) -> WordPieceTokenizer:
        """Build from a ``tokenizer.json`` whose model is WordPiece with a BertNormalizer."""
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec.get("model") or {}
        if model.get("type") != "WordPiece":
            raise TokenizerConfigError(f"{path}: the model is {model.get('type')!r}, not WordPiece")
        normalizer = spec.get("normalizer") or {}
        if normalizer.get("type") != "BertNormalizer":
            raise TokenizerConfigError(f"{path}: the normalizer is {normalizer.get('type')!r}, not BertNormalizer")
        if (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
            raise TokenizerConfigError(f"{path}: the pre-tokenizer is not BertPreTokenizer")
        lowercase = bool(normalizer.get("lowercase", True))
        strip = normalizer.get("strip_accents")
        return cls(
            {str(k): int(v) for k, v in model["vocab"].items()},
            unk_token=model.get("unk_token", "[UNK]"),
            continuing_prefix=model.get("continuing_subword_prefix", "##"),
            max_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
            lowercase=lowercase,
            strip_accents=lowercase if strip is None else bool(strip),
            clean_text=bool(normalizer.get("clean_text", True)),
            handle_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self.words(text):
            ids.extend(self._word_ids(word))
        return ids

    def frame(self, tokens: list[int]) -> list[int]:
        """``[CLS] tokens [SEP]``: the sequence the model reads."""
        return [self.cls_id, *tokens, self.sep_id]

    def normalize(self, text: str) -> str:
        """BertNormalizer, in its order: clean, pad CJK, strip accents (NFD, drop Mn), lowercase."""
        if text.isascii():  # the common case, several times faster: no CJK, no accents to strip
            if self._clean_text:
                text = text.translate(_ASCII_CLEAN)
            return text.lower() if self._lowercase else text
        if self._clean_text:
            text = "".join(
                " " if c in _WHITESPACE else c
                for c in text
                if c in ("\t", "\n", "\r") or not (c == "\x00" or c == "\ufffd" or unicodedata.category(c) in _CONTROL)
            )
        if self._chinese:
            text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in text)
        if self._strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        if self._lowercase:
            text = "".join(c.lower() for c in text)  # per character, as Rust does: no final-sigma rule
        return text

    def words(self, text: str) -> list[str]:
        """Normalized words: split on whitespace, each punctuation character a word of its own."""
        words: list[str] = []
        current: list[str] = []
        for c in self.normalize(text):
            if c in _WHITESPACE:
                if current:
                    words.append("".join(current))
                    current = []
            elif _is_punctuation(c):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(c)
            else:
                current.append(c)
        if current:
            words.append("".join(current))
        return words

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        if len(word) > self._max_chars:
            return (self.unk_id,)
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else self._prefix + word[start:end]
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return (self.unk_id,)
            ids.append(found)
            start = end
        return tuple(ids)

"""Constrained decoding: JSON schemas → GBNF grammars → llama.cpp's grammar sampler, per sequence.

`compile_schema` turns a (bounded, checked) JSON schema into a grammar or says exactly which
schema features or bounds it cannot meet (engine/schema_bounds.py, engine/grammar_compiler.py).
`GrammarConstraint` lives on the decode thread, one per choice: it masks logits the grammar
forbids and advances with every accepted token.
"""

from __future__ import annotations

import ctypes
import re
import time

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF

from modelhost.engine.grammar_compiler import default_compiler
from modelhost.engine.grammar_errors import GrammarError

__all__ = ["JSON_OBJECT_GRAMMAR", "GrammarConstraint", "GrammarError", "compile_schema", "rename_root", "validate_grammar"]

MASK_CANDIDATES = 256
# What one choice's grammar may cost the decode thread, which every tenant's sequences share, in all.
# Within the schema bounds a step costs milliseconds, and up to ~2 s in the worst accepted shapes
# when no well-scored token fits and the whole vocabulary is checked (bench/schema_bounds.py); past
# this budget the choice ends with finish_reason "length".
GRAMMAR_SECONDS_PER_CHOICE = 5.0

JSON_OBJECT_GRAMMAR = JSON_GBNF  # its root is `object`, which is what json_object mode promises


def compile_schema(schema: object, *, prop_order: list[str] | None = None, tenant: str | None = None) -> str:
    """GBNF for values matching `schema` (root rule `root`); blocking, so call it off the event loop.

    The schema's costs are bounded before anything is built (`schema_bounds`), and the converter
    runs in a capped, killable worker process (`grammar_compiler`), taking turns per `tenant`
    (the organization) so that one cannot keep the workers from the others.
    """
    grammar = default_compiler().compile(schema, prop_order, tenant=tenant)
    # The converter's string characters admit raw control characters, which JSON forbids.
    return _without_control_chars(grammar)


_LOOSE_CHAR = r'char ::= [^"\\]'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'


def _without_control_chars(grammar: str) -> str:
    return "\n".join(_JSON_CHAR + line[len(_LOOSE_CHAR):] if line.startswith(_LOOSE_CHAR) else line for line in grammar.split("\n"))


def rename_root(grammar: str, name: str) -> str:
    """The same grammar with its `root` rule (and references to it) renamed to `name`."""
    return re.sub(r"(?<![\w-])root(?![\w-])", name, grammar)


class GrammarConstraint:
    """llama.cpp's grammar sampler for one sequence. Use only on the decode thread."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, grammar: str, *, lazy_trigger: str | None = None) -> None:
        if lazy_trigger is None:
            self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        else:
            # llama.cpp matches the pattern against all text so far and feeds the grammar from the
            # first capture group: everything from the trigger on is constrained.
            pattern = "[\\s\\S]*?(" + re.escape(lazy_trigger) + "[\\s\\S]*)"
            patterns = (ctypes.c_char_p * 1)(pattern.encode())
            no_tokens = (llama_cpp.llama_token * 1)()
            self._sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                vocab, grammar.encode(), b"root", patterns, 1, no_tokens, 0
            )
        if not self._sampler:
            raise GrammarError("The grammar could not be parsed.")
        self._one = (llama_cpp.llama_token_data * 1)()
        self.spent = 0.0  # seconds this constraint has held the decode thread (see GRAMMAR_SECONDS_PER_CHOICE)

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (cheap: checks one token)."""
        started = time.perf_counter()
        try:
            return self._allows(token)
        finally:
            self.spent += time.perf_counter() - started

    def _allows(self, token: int) -> bool:
        # llama_cpp annotates the field as its ctypes type (c_int32); a Structure field takes a plain int.
        self._one[0].id = token  # type: ignore[assignment]
        self._one[0].logit = 0.0
        self._one[0].p = 0.0
        array = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return bool(np.isfinite(self._one[0].logit))

    def mask(self, scores: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            self._mask(scores)
        finally:
            self.spent += time.perf_counter() - started

    def _mask(self, scores: np.ndarray) -> None:
        """Set the score of every token the grammar forbids next to -inf (in place).

        Checking a token against the grammar costs microseconds, and the vocabulary has tens of
        thousands: so only the `MASK_CANDIDATES` best-scored tokens are checked (the rest, whose
        probability is negligible, are dropped), and the whole vocabulary only if none of those fits.
        """
        k = min(MASK_CANDIDATES, scores.size)
        best = np.argpartition(scores, -k)[-k:] if k < scores.size else np.arange(scores.size)
        allowed = self._apply(best.astype(np.int32), scores[best])
        if not np.isfinite(allowed).any() and k < scores.size:
            best = np.arange(scores.size, dtype=np.int32)
            allowed = self._apply(best, scores)
        scores[:] = -np.inf
        scores[best] = allowed

    def _apply(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        cells = np.zeros(ids.size, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        cells["id"] = ids
        cells["logit"] = logits
        data = cells.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(data, ids.size, -1, False)
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return cells["logit"].copy()

    def accept(self, token: int) -> None:
        started = time.perf_counter()
        llama_cpp.llama_sampler_accept(self._sampler, token)
        self.spent += time.perf_counter() - started

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None


def validate_grammar(vocab: llama_cpp.llama_vocab_p, grammar: str) -> None:
    """Parse `grammar` once with llama.cpp, raising `GrammarError` if it is not valid GBNF."""
    GrammarConstraint(vocab, grammar).close()

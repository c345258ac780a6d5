"""Constrained decoding: JSON schemas → GBNF grammars → llama.cpp's grammar sampler, per sequence.

`compile_schema` turns a (bounded, checked) JSON schema into a grammar or says exactly which
schema features it cannot enforce. `GrammarConstraint` lives on the decode thread, one per choice:
it masks logits the grammar forbids and advances with every accepted token.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Iterator

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_ENUM_VALUES = 1024
MAX_REPEAT = 1024  # minItems/maxItems/minLength/maxLength: each bound expands into grammar rules
MAX_GRAMMAR_BYTES = 256 * 1024
MASK_CANDIDATES = 256

# Keywords the grammar enforces, or that only annotate.
_ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
    "pattern", "minLength", "maxLength", "format",
}
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly", "strict", "nullable"}
_FORMATS = {"date", "time", "date-time", "uuid"}

JSON_OBJECT_GRAMMAR = JSON_GBNF  # its root is `object`, which is what json_object mode promises


class GrammarError(ValueError):
    """The schema cannot be enforced; the message names the feature or limit."""


def _walk(node: object, path: str, depth: int) -> Iterator[tuple[str, str]]:
    """Yield (path, problem) for every part of the schema the grammar cannot honour."""
    if depth > MAX_SCHEMA_DEPTH:
        yield path, f"nesting deeper than {MAX_SCHEMA_DEPTH} levels"
        return
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        yield path, "a schema must be an object"
        return
    for key, value in node.items():
        here = f"{path}/{key}"
        if key in _ANNOTATIONS:
            continue
        if key not in _ENFORCED:
            yield here, f"'{key}' is not supported"
            continue
        if key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                yield here, f"'{key}' must be an object"
                continue
            for name, sub in value.items():
                yield from _walk(sub, f"{here}/{name}", depth + 1)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            if not isinstance(value, list) or not value:
                yield here, f"'{key}' must be a non-empty array"
                continue
            for i, sub in enumerate(value):
                yield from _walk(sub, f"{here}/{i}", depth + 1)
        elif key in ("items", "additionalProperties"):
            if not isinstance(value, bool):
                yield from _walk(value, here, depth + 1)
        elif key == "enum":
            if not isinstance(value, list) or len(value) > MAX_ENUM_VALUES:
                yield here, f"'enum' must be an array of at most {MAX_ENUM_VALUES} values"
        elif key in ("minItems", "maxItems", "minLength", "maxLength"):
            if not isinstance(value, int) or not 0 <= value <= MAX_REPEAT:
                yield here, f"'{key}' must be an integer between 0 and {MAX_REPEAT}"
        elif key == "format" and value not in _FORMATS:
            yield here, f"format '{value}' is not supported (supported: {', '.join(sorted(_FORMATS))})"
        elif key == "$ref" and (not isinstance(value, str) or not value.startswith("#")):
            yield here, "only local references ('#/…') are supported"
        elif key == "pattern" and (not isinstance(value, str) or len(value) > 1000):
            yield here, "'pattern' must be a string of at most 1000 characters"


def check_schema(schema: object) -> None:
    """Raise `GrammarError` naming every unsupported feature (cheap: runs before any compilation)."""
    encoded = json.dumps(schema)
    if len(encoded) > MAX_SCHEMA_BYTES:
        raise GrammarError(f"The schema is {len(encoded)} bytes; the limit is {MAX_SCHEMA_BYTES}.")
    problems = list(_walk(schema, "#", 0))
    if problems:
        listed = "; ".join(f"{p or '#'}: {msg}" for p, msg in problems[:10])
        raise GrammarError(f"The schema uses features that cannot be enforced: {listed}.")


def _inline_root_ref(schema: object) -> object:
    """Replace a root-level local `$ref` by what it points to (keeping `$defs` beside it).

    The converter does not look inside a node that has a `$ref`, so references nested in the
    root's own `$defs` (pydantic's recursive models) would otherwise stay unresolved.
    """
    for _ in range(8):
        if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str) or not schema["$ref"].startswith("#/"):
            return schema
        target: object = schema
        for part in schema["$ref"][2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise GrammarError(f"#/$ref: '{schema['$ref']}' does not resolve")
            target = target[part]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**rest, **target} if isinstance(target, dict) else target
    raise GrammarError("#/$ref: the root reference chain is too long")


def compile_schema(schema: object, *, prop_order: list[str] | None = None) -> str:
    """GBNF for values matching `schema` (root rule `root`)."""
    check_schema(schema)
    try:
        grammar = json_schema_to_gbnf(json.dumps(_inline_root_ref(schema)), prop_order)
    except (AssertionError, KeyError, ValueError, TypeError, RecursionError, re.error) as exc:
        raise GrammarError(f"The schema could not be compiled: {exc}") from exc
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise GrammarError("The schema compiles to a grammar that is too large.")
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

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (cheap: checks one token)."""
        self._one[0].id = token
        self._one[0].logit = 0.0
        self._one[0].p = 0.0
        array = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return bool(np.isfinite(self._one[0].logit))

    def mask(self, scores: np.ndarray) -> None:
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
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None


def validate_grammar(vocab: llama_cpp.llama_vocab_p, grammar: str) -> None:
    """Parse `grammar` once with llama.cpp, raising `GrammarError` if it is not valid GBNF."""
    GrammarConstraint(vocab, grammar).close()

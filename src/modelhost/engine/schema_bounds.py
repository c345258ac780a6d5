"""What a JSON schema may cost, checked before any grammar is built.

A schema is client input that turns into work twice: once when it is compiled to a GBNF grammar
(pure Python, super-linear in some shapes) and then on every decoded token (llama.cpp advances the
grammar's stacks, which grow with ambiguity). Both are bounded here from the schema alone, in time
linear in its size, so an oversized schema is refused in milliseconds naming what is too large,
and everything within the bounds compiles in well under a second (measured in
`tests/security/test_R2_schema_bounds.py`). The compiler still runs in a killable, memory-capped
process (`engine/grammar_compiler.py`) in case these estimates are ever wrong.

The grammar's size is estimated in bytes as the converter writes it: every repetition is written
out (`{"maxLength": 50}` is 50 copies of the character rule, `"maxItems": 20` 20 references to the
item rule, a pattern's `(ab){3,8}` 8 references to a rule for the group), rule names are the path
of property names that leads to them, and an object with k optional properties gets k chains.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32  # nested schemas (properties, items, anyOf …)
MAX_SCHEMA_NODES = 5000  # every (sub)schema object in the document
MAX_PROPERTIES = 1000  # object properties, all objects together (OpenAI allows 5000 with 10 levels)
MAX_OBJECT_PROPERTIES = 256  # in one object
MAX_OPTIONAL_PROPERTIES = 64  # not `required`, in one object: the grammar needs a chain per optional one
MAX_ALTERNATIVES = 128  # anyOf / oneOf / allOf / prefixItems entries, or `type` list members, in one node
MAX_ENUM_VALUES = 1000
MAX_REPEAT = 1000  # minItems/maxItems/minLength/maxLength, and a pattern's {m,n}
MAX_PATTERN_CHARS = 1000
MAX_PATTERN_GROUP_DEPTH = 8
MAX_PATTERN_ALTERNATIVES = 64  # `|` in one pattern
MAX_GRAMMAR_BYTES = 256 * 1024  # the estimated grammar (module docstring), and the compiled one
MAX_NAME_CHARS = 256  # a property or $defs name: it becomes part of grammar rule names

_TOO_LARGE = "too_large"


class GrammarError(ValueError):
    """The schema cannot be enforced; the message names the feature or limit."""


# Keywords the grammar enforces, or that only annotate.
ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
    "pattern", "minLength", "maxLength", "format",
})
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly", "strict", "nullable",
})
FORMATS = frozenset({"date", "time", "date-time", "uuid"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


@dataclass
class _Tally:
    nodes: int = 0
    properties: int = 0
    grammar_bytes: int = 0


def check_schema(schema: object) -> None:
    """Raise `GrammarError` naming every unsupported feature or exceeded bound (linear in the schema)."""
    try:
        encoded = json.dumps(schema, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        raise GrammarError(f"The schema is not plain JSON: {exc}") from exc
    if len(encoded) > MAX_SCHEMA_BYTES:
        raise GrammarError(f"The schema is {len(encoded)} bytes; the limit is {MAX_SCHEMA_BYTES}.")
    tally = _Tally()
    problems = list(_walk(schema, "#", 0, tally, len("root")))
    if tally.nodes > MAX_SCHEMA_NODES:
        problems.append(("#", f"{tally.nodes} schema objects; the limit is {MAX_SCHEMA_NODES}"))
    if tally.properties > MAX_PROPERTIES:
        problems.append(("#", f"{tally.properties} object properties in all; the limit is {MAX_PROPERTIES}"))
    if tally.grammar_bytes > MAX_GRAMMAR_BYTES:
        problems.append(
            ("#", f"the schema's grammar would be about {tally.grammar_bytes // 1024} KiB (every maxLength, maxItems and "
                  f"pattern repetition is written out, under rule names made of the property path); the limit is "
                  f"{MAX_GRAMMAR_BYTES // 1024} KiB")
        )
    if problems:
        listed = "; ".join(f"{p}: {msg}" for p, msg in problems[:10])
        raise GrammarError(f"The schema uses features that cannot be enforced: {listed}.")


def _walk(node: object, path: str, depth: int, tally: _Tally, name_len: int) -> Iterator[tuple[str, str]]:
    """Yield (path, problem) for every part of the schema the grammar cannot honour, and count costs.

    `name_len` is the length of the grammar rule name the converter gives this node.
    """
    if depth > MAX_SCHEMA_DEPTH:
        yield path, f"nesting deeper than {MAX_SCHEMA_DEPTH} levels"
        return
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        yield path, "a schema must be an object"
        return
    tally.nodes += 1
    rule = 4 * name_len + 32  # its rule, its key-value rule, and references to both, each spelling the name
    tally.grammar_bytes += rule
    if tally.nodes > MAX_SCHEMA_NODES:
        return  # reported once by the caller; stop walking a document that is already too large
    for key, value in node.items():
        here = f"{path}/{key}"
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            yield here, f"'{key}' is not supported"
            continue
        if key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                yield here, f"'{key}' must be an object"
                continue
            if key == "properties":
                tally.properties += len(value)
                if len(value) > MAX_OBJECT_PROPERTIES:
                    yield here, f"{len(value)} properties; the limit for one object is {MAX_OBJECT_PROPERTIES}"
                    continue
            for name, sub in value.items():
                if len(name) > MAX_NAME_CHARS:
                    yield here, f"a name longer than {MAX_NAME_CHARS} characters"
                    continue
                yield from _walk(sub, f"{here}/{name}", depth + 1, tally, name_len + 1 + len(name))
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            if not isinstance(value, list) or not value:
                yield here, f"'{key}' must be a non-empty array"
                continue
            if len(value) > MAX_ALTERNATIVES:
                yield here, f"{len(value)} entries; the limit is {MAX_ALTERNATIVES}"
                continue
            for i, sub in enumerate(value):
                yield from _walk(sub, f"{here}/{i}", depth + 1, tally, name_len + 12)
        elif key in ("items", "additionalProperties"):
            if not isinstance(value, bool):
                yield from _walk(value, here, depth + 1, tally, name_len + 16)
        elif key == "type":
            yield from _check_type(value, here)
        elif key == "required":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                yield here, "'required' must be an array of strings"
        elif key == "enum":
            if not isinstance(value, list) or not value or len(value) > MAX_ENUM_VALUES:
                yield here, f"'enum' must be a non-empty array of at most {MAX_ENUM_VALUES} values"
            else:
                tally.grammar_bytes += 2 * len(json.dumps(value))  # each value, JSON-encoded and quoted
        elif key in ("minItems", "maxItems", "minLength", "maxLength"):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPEAT:
                yield here, f"'{key}' must be an integer between 0 and {MAX_REPEAT}"
            else:
                # maxLength copies the 4-byte `char` rule; maxItems the item rule's name and a separator.
                tally.grammar_bytes += value * (8 if key.endswith("Length") else name_len + 28)
        elif key == "format" and value not in FORMATS:
            yield here, f"format '{value}' is not supported (supported: {', '.join(sorted(FORMATS))})"
        elif key == "$ref" and (not isinstance(value, str) or not value.startswith("#")):
            yield here, "only local references ('#/…') are supported"
        elif key == "pattern":
            if not isinstance(value, str) or len(value) > MAX_PATTERN_CHARS:
                yield here, f"'pattern' must be a string of at most {MAX_PATTERN_CHARS} characters"
                continue
            try:
                tally.grammar_bytes += pattern_cost(value, name_len)
            except GrammarError as exc:
                yield here, str(exc)
    optional = _optional_properties(node)
    if optional > MAX_OPTIONAL_PROPERTIES:
        yield path, f"{optional} optional properties in one object; the limit is {MAX_OPTIONAL_PROPERTIES} (list the others in 'required')"
    tally.grammar_bytes += 2 * optional * (name_len + 32)


def _check_type(value: object, path: str) -> Iterator[tuple[str, str]]:
    names = value if isinstance(value, list) else [value]
    if not names or len(names) > len(_TYPES) or not all(isinstance(n, str) and n in _TYPES for n in names):
        yield path, f"'type' must be one of {', '.join(sorted(_TYPES))}, or a list of them"


def _optional_properties(node: dict[str, object]) -> int:
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return 0
    required = node.get("required")
    named = set(required) if isinstance(required, list) and all(isinstance(v, str) for v in required) else set()
    return sum(1 for name in properties if name not in named)


def pattern_cost(pattern: str, name_len: int = len("root")) -> int:
    """The grammar bytes `pattern` expands to; `GrammarError` for what cannot be compiled or bounded.

    `name_len` is the length of the pattern's rule name: a repeated group or character class becomes
    a rule named after it (plus a counter), and every repetition writes that name out again.

    Patterns are compiled to grammar rules, not run by a backtracking engine, so the risk is size:
    every `{m,n}` is written out n times. Ambiguity is not: llama.cpp merges identical grammar
    stacks, and `^(a*a*a*)*$` or `^((a*)*(a|aa)*)*$` cost what `^a+$` costs per token (measured,
    400 tokens each). Repetition counts, alternatives and group nesting are bounded.
    """
    if not (pattern.startswith("^") and pattern.endswith("$")) or len(pattern) < 2:
        raise GrammarError("a pattern must be anchored: start with '^' and end with '$'")
    text = pattern[1:-1]
    alternatives = 0
    rule_ref = name_len + 6  # a reference to the rule made for a repeated class or group
    stack = [16]  # one entry per open group: its grammar bytes so far
    last: int | None = None  # the bytes each copy of the atom a quantifier would repeat writes
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                raise GrammarError("a pattern may not end with a lone '\\'")
            last, i = 6, i + 2
            stack[-1] += 2
        elif c == "[":
            j = i + 1
            while j < len(text) and text[j] != "]":
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                raise GrammarError("unbalanced '[' in pattern")
            stack[-1] += j + 1 - i
            last, i = rule_ref, j + 1
        elif c == "(":
            if text.startswith("(?", i):
                raise GrammarError("lookarounds, non-capturing and named groups ('(?…)') are not supported in patterns")
            stack.append(2)
            if len(stack) - 1 > MAX_PATTERN_GROUP_DEPTH:
                raise GrammarError(f"groups nested deeper than {MAX_PATTERN_GROUP_DEPTH} levels in pattern")
            last, i = None, i + 1
        elif c == ")":
            if len(stack) == 1:
                raise GrammarError("unbalanced ')' in pattern")
            group = stack.pop()
            stack[-1] += group
            last, i = rule_ref, i + 1
        elif c == "|":
            alternatives += 1
            if alternatives > MAX_PATTERN_ALTERNATIVES:
                raise GrammarError(f"more than {MAX_PATTERN_ALTERNATIVES} alternatives ('|') in pattern")
            stack[-1] += 3
            last, i = None, i + 1
        elif c in "*+?{":
            if last is None:
                raise GrammarError(f"'{c}' at index {i + 1} of the pattern repeats nothing")
            if c == "{":
                close = text.find("}", i)
                if close < 0:
                    raise GrammarError("unbalanced '{' in pattern")
                low, high = _quantifier(text[i + 1:close])
                copies, i = max(low, high or 0, 1), close + 1
            else:
                copies, i = 1, i + 1
            stack[-1] += last * copies + 4
            last = None  # a quantifier on a quantifier ('a{2}{3}', 'a*?') repeats nothing: refused next time round
        else:
            last, i = 5, i + 1
            stack[-1] += 1
    if len(stack) != 1:
        raise GrammarError("unbalanced '(' in pattern")
    return stack[0] + name_len


def _quantifier(inside: str) -> tuple[int, int | None]:
    parts = [p.strip() for p in inside.split(",")]
    try:
        if len(parts) == 1:
            low = high = int(parts[0])
        elif len(parts) == 2:
            low = int(parts[0]) if parts[0] else 0
            high = int(parts[1]) if parts[1] else None
        else:
            raise ValueError(inside)
    except ValueError:
        raise GrammarError(f"invalid repetition '{{{inside}}}' in pattern") from None
    if low < 0 or low > MAX_REPEAT or (high is not None and not low <= high <= MAX_REPEAT):
        raise GrammarError(f"repetition '{{{inside}}}' in pattern: counts must be between 0 and {MAX_REPEAT}, the first not above the second")
    return low, high

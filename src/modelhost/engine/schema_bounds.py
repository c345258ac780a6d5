"""What a JSON schema may cost, checked before any grammar is built.

A schema is client input that turns into work twice: once when it is compiled to a GBNF grammar
(pure Python, super-linear in some shapes) and then on every decoded token (llama.cpp advances the
grammar's stacks, which grow with ambiguity). Both are bounded here from the schema alone, in time
linear in its size, so an oversized schema is refused in milliseconds naming what is too large,
and everything within the bounds compiles in well under a second (`bench/schema_bounds.py`;
bench/README.md). The compiler still runs in a killable, memory-capped
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

from modelhost.engine.grammar_errors import GrammarError
from modelhost.engine.schema_refs import with_hoisted_refs

__all__ = ["GrammarError", "check_schema", "grammar_width", "pattern_cost"]

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


def check_schema(schema: object) -> object:
    """The schema as it will be compiled (references hoisted, `schema_refs`), or `GrammarError` naming
    every unsupported feature or exceeded bound. Linear in the schema; nothing is built."""
    try:
        encoded = json.dumps(schema, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        raise GrammarError(f"The schema is not plain JSON: {exc}") from exc
    if len(encoded) > MAX_SCHEMA_BYTES:
        raise GrammarError(f"The schema is {len(encoded)} bytes; the limit is {MAX_SCHEMA_BYTES}.")
    problems = list(_walk(schema, "#", 0, _Tally(), len("root")))  # as sent: paths the client knows
    if not problems:
        document = with_hoisted_refs(encoded)
        tally = _Tally()
        problems = list(_walk(document, "#", 0, tally, len("root")))  # as compiled: what it costs
        problems += _merged_object_problems(document)
        if tally.nodes > MAX_SCHEMA_NODES:
            problems.append(("#", f"{tally.nodes} schema objects; the limit is {MAX_SCHEMA_NODES}"))
        if tally.properties > MAX_PROPERTIES:
            problems.append(("#", f"{tally.properties} object properties in all; the limit is {MAX_PROPERTIES}"))
        if tally.grammar_bytes > MAX_GRAMMAR_BYTES:
            problems.append(
                ("#", f"the schema's grammar would be about {tally.grammar_bytes // 1024} KiB (every maxLength, maxItems "
                      f"and pattern repetition is written out, under rule names made of the property path); the limit is "
                      f"{MAX_GRAMMAR_BYTES // 1024} KiB")
            )
        if not problems:
            width = grammar_width(document)
            if width > MAX_GRAMMAR_WIDTH:
                problems.append(
                    ("#", f"about {width} readings of a value can be open at once (alternatives of the same type nested in "
                          f"one another multiply, and each costs time on every token); the limit is {MAX_GRAMMAR_WIDTH}")
                )
    if problems:
        listed = "; ".join(f"{p}: {msg}" for p, msg in problems[:10])
        raise GrammarError(f"The schema uses features that cannot be enforced: {listed}.")
    return document


def _merged_object_problems(document: object) -> list[tuple[str, str]]:
    """`allOf` merges the properties of its parts (and of `anyOf`s among them, as optional ones) into one object."""
    definitions = document.get("$defs", {}) if isinstance(document, dict) else {}
    problems: list[tuple[str, str]] = []
    pending: list[object] = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        pending.extend(node.values())
        parts = node.get("allOf")
        if not isinstance(parts, list):
            continue
        merged = optional = 0
        for part in parts:
            inner = part.get("anyOf") if isinstance(part, dict) and isinstance(part.get("anyOf"), list) else None
            for component in inner if inner is not None else [part]:
                if isinstance(component, dict) and isinstance(component.get("$ref"), str):
                    component = definitions.get(component["$ref"].rsplit("/", 1)[-1], {})
                properties = component.get("properties") if isinstance(component, dict) else None
                count = len(properties) if isinstance(properties, dict) else 0
                merged += count
                optional += count if inner is not None else _optional_properties(component) if isinstance(component, dict) else 0
        if merged > MAX_OBJECT_PROPERTIES or optional > MAX_OPTIONAL_PROPERTIES:
            problems.append(
                ("#/…/allOf", f"'allOf' merges {merged} properties ({optional} optional) into one object; the limits are "
                              f"{MAX_OBJECT_PROPERTIES} ({MAX_OPTIONAL_PROPERTIES} optional)")
            )
            break
    return problems


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
        elif key == "format" and not (isinstance(value, str) and value in FORMATS):
            yield here, f"format '{str(value)[:50]}' is not supported (supported: {', '.join(sorted(FORMATS))})"
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

    Patterns are compiled to grammar rules, not run by a backtracking engine. One risk is size:
    every `{m,n}` is written out n times. The other is ambiguity: each copy of a counted repetition
    is a grammar position of its own, so counting a group that can match texts of different lengths
    (`(a{0,10}){0,10}`, `(a|aa){5}`) lets the readings multiply at every level: four such levels took
    seconds per token on the shared decode thread. Such a count is refused (`*`, `+` and `?` are
    fine: llama.cpp merges their stacks, and `^((a*)*(a|aa)*)*$` costs what `^a+$` costs per token,
    measured over 400 tokens). Repetition counts, alternatives and group nesting are bounded.
    """
    if not (pattern.startswith("^") and pattern.endswith("$")) or len(pattern) < 2:
        raise GrammarError("a pattern must be anchored: start with '^' and end with '$'")
    text = pattern[1:-1]
    alternatives = 0
    rule_ref = name_len + 6  # a reference to the rule made for a repeated class or group
    stack = [16]  # one entry per open group: its grammar bytes so far
    fixed = [True]  # per open group: whether every text it matches has the same length
    last: int | None = None  # the bytes each copy of the atom a quantifier would repeat writes
    last_fixed = True  # whether that atom matches texts of one length only
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                raise GrammarError("a pattern may not end with a lone '\\'")
            last, last_fixed, i = 6, True, i + 2
            stack[-1] += 2
        elif c == "[":
            j = i + 1
            while j < len(text) and text[j] != "]":
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                raise GrammarError("unbalanced '[' in pattern")
            stack[-1] += j + 1 - i
            last, last_fixed, i = rule_ref, True, j + 1
        elif c == "(":
            if text.startswith("(?", i):
                raise GrammarError("lookarounds, non-capturing and named groups ('(?…)') are not supported in patterns")
            stack.append(2)
            fixed.append(True)
            if len(stack) - 1 > MAX_PATTERN_GROUP_DEPTH:
                raise GrammarError(f"groups nested deeper than {MAX_PATTERN_GROUP_DEPTH} levels in pattern")
            last, i = None, i + 1
        elif c == ")":
            if len(stack) == 1:
                raise GrammarError("unbalanced ')' in pattern")
            group = stack.pop()
            stack[-1] += group
            last, last_fixed, i = rule_ref, fixed.pop(), i + 1
            fixed[-1] = fixed[-1] and last_fixed
        elif c == "|":
            alternatives += 1
            if alternatives > MAX_PATTERN_ALTERNATIVES:
                raise GrammarError(f"more than {MAX_PATTERN_ALTERNATIVES} alternatives ('|') in pattern")
            stack[-1] += 3
            fixed[-1] = False  # alternatives may differ in length
            last, i = None, i + 1
        elif c in "*+?{":
            if last is None:
                raise GrammarError(f"'{c}' at index {i + 1} of the pattern repeats nothing")
            if c == "{":
                close = text.find("}", i)
                if close < 0:
                    raise GrammarError("unbalanced '{' in pattern")
                counted = text[i + 1:close]
                low, high = _quantifier(counted)
                copies, i = max(low, high or 0, 1), close + 1
                if copies > 1 and not last_fixed:
                    raise GrammarError(
                        f"the count '{{{counted}}}' repeats "
                        "something that can match texts of different lengths, so its readings multiply; count a fixed-length "
                        "group, or use '*' or '+'"
                    )
                fixed[-1] = fixed[-1] and last_fixed and low == high
            else:
                copies, i = 1, i + 1
                fixed[-1] = False
            stack[-1] += last * copies + 4
            last = None  # a quantifier on a quantifier ('a{2}{3}', 'a*?') repeats nothing: refused next time round
        else:
            last, last_fixed, i = 5, True, i + 1
            stack[-1] += 1
    if len(stack) != 1:
        raise GrammarError("unbalanced '(' in pattern")
    return stack[0] + name_len


def _quantifier(inside: str) -> tuple[int, int | None]:
    parts = [p.strip() for p in inside.split(",")]
    high: int | None
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


# -- ambiguity -------------------------------------------------------------------------------------
# llama.cpp follows a grammar with one stack per way the text so far can be read, and pays for each
# stack on every token of every candidate. Alternatives of the same JSON type that are nested in
# one another multiply those ways (an anyOf of 128 arrays of an anyOf of 128 arrays … kept one
# request's token for minutes on the decode thread every tenant shares). `grammar_width` bounds them
# from the schema: alternatives add up per JSON type (a value's first character tells the types
# apart), nesting in an object or array carries the widest member, and references count their
# target. The worst step is one where no well-scored token fits and the whole vocabulary is
# checked against every reading (bench/schema_bounds.py, random scores): nested alternatives of
# width 1024 took 2.8 s there, an enum of 1000 strings 0.34 s (its readings are plain literals,
# about eight times cheaper each, so an enum value counts an eighth).
MAX_GRAMMAR_WIDTH = 256
ENUM_VALUES_PER_READING = 8
_JSON_TYPES = ("object", "array", "string", "number", "boolean", "null")


def grammar_width(document: object) -> int:
    """How many readings of a value of `document` can be alive at once (hoisted refs: `schema_refs`)."""
    definitions = document.get("$defs", {}) if isinstance(document, dict) else {}
    if not isinstance(definitions, dict):
        definitions = {}
    widths: dict[str, int] = {}
    kinds: dict[str, set[str]] = {}
    open_refs: set[str] = set()
    budget = [MAX_SCHEMA_NODES * 20]  # analysis steps: references inside cycles are evaluated again

    def step() -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise GrammarError("the schema's references are too intertwined to analyse")

    def target(node: dict[str, object]) -> tuple[str, object] | None:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref[len("#/$defs/"):]
            if name in definitions:
                return name, definitions[name]
        return None

    def types(node: object) -> set[str]:
        """The JSON types a value of `node` may have (what its first character can tell apart)."""
        step()
        if not isinstance(node, dict) or not node:
            return set(_JSON_TYPES)
        if (found := target(node)) is not None:
            name, body = found
            if name not in kinds:
                kinds[name] = set(_JSON_TYPES)  # while it is being worked out (a cycle): anything
                kinds[name] = types(body)
            return kinds[name]
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                return set().union(*(types(alt) for alt in node[key]))
        named = node.get("type")
        if isinstance(named, str):
            return {"number" if named == "integer" else named}
        if isinstance(named, list):
            return {"number" if t == "integer" else str(t) for t in named}
        values = node["enum"] if isinstance(node.get("enum"), list) else [node["const"]] if "const" in node else None
        if values is not None:
            return {_value_type(v) for v in values}
        if "properties" in node or "additionalProperties" in node:
            return {"object"}
        if "items" in node or "prefixItems" in node:
            return {"array"}
        if "pattern" in node or "format" in node or "minLength" in node or "maxLength" in node:
            return {"string"}
        return set(_JSON_TYPES)

    def width(node: object, cycle: int) -> tuple[int, frozenset[str]]:
        """(the width, the references still being worked out that it depends on)."""
        step()
        if not isinstance(node, dict):
            return 1, frozenset()
        if (found := target(node)) is not None:
            name, body = found
            if name in widths:
                return widths[name], frozenset()
            if name in open_refs:
                return cycle, frozenset({name})  # back into itself: measured below, per turn of the cycle
            open_refs.add(name)
            (once, deps), (twice, _) = width(body, 1), width(body, 2)
            open_refs.discard(name)
            if twice - once >= 2:
                raise GrammarError(
                    f"a definition refers back to itself through {twice - once} alternatives of the same type, so the "
                    "readings multiply with every level of nesting"
                )
            deps = deps - {name}
            if not deps:
                widths[name] = twice
            return twice, deps
        deps = frozenset()
        alternatives = next((node[k] for k in ("anyOf", "oneOf") if isinstance(node.get(k), list)), None)
        if alternatives is not None:
            per_type = dict.fromkeys(_JSON_TYPES, 0)
            for alt in alternatives:
                w, d = width(alt, cycle)
                deps |= d
                for t in types(alt):
                    per_type[t] += w
            return max(per_type.values()), deps
        if isinstance(node.get("enum"), list):
            per_value = dict.fromkeys(_JSON_TYPES, 0)
            for value in node["enum"]:
                per_value[_value_type(value)] += 1
            return -(-max(per_value.values()) // ENUM_VALUES_PER_READING), deps
        members: list[object] = []
        properties = node.get("properties")
        widest = 1
        if isinstance(properties, dict):
            widest = len(properties) or 1  # the keys of optional properties are read side by side
            members.extend(properties.values())
        if isinstance(node.get("allOf"), list):
            members.extend(node["allOf"])
        members.extend(node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict))
        if isinstance(node.get("prefixItems"), list):
            members.extend(node["prefixItems"])
        for member in members:
            w, d = width(member, cycle)
            widest, deps = max(widest, w), deps | d
        if isinstance(node.get("pattern"), str):
            widest = max(widest, 2 + node["pattern"].count("|"))
        return widest, deps

    return width(document, 1)[0]


def _value_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"

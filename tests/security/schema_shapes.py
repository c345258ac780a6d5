"""Costly JSON-schema shapes (issue #12 item 1), shared by tests/security/test_R2_schema_bounds.py
and bench/schema_bounds.py: one of each class the bounds refuse, and the worst shapes they accept."""

from __future__ import annotations


def string(**keywords: object) -> dict[str, object]:
    return {"type": "string", **keywords}


def nested(depth: int, leaf: dict[str, object], name: str = "x" * 200) -> dict[str, object]:
    node = leaf
    for _ in range(depth):
        node = {"type": "object", "properties": {name: node}, "required": [name]}
    return node


def alternatives_nested(width: int, depth: int) -> dict[str, object]:
    """`depth` levels of an anyOf of `width` arrays, each holding the next level: readings multiply."""
    definitions: dict[str, object] = {}
    for level in range(depth, 0, -1):
        inner = {"$ref": f"#/$defs/L{level + 1}"} if level < depth else {"type": "integer"}
        definitions[f"L{level}"] = {"anyOf": [{"type": "array", "prefixItems": [inner]} for _ in range(width)]}
    return {"$ref": "#/$defs/L1", "$defs": definitions}


def refs_reexpanded(depth: int) -> dict[str, object]:
    """References whose targets the converter cached under a reserved name ('root'): re-expanded at
    every reference, 2**depth times, before references were hoisted."""
    definitions: dict[str, object] = {}
    for level in range(depth):
        nxt = {"$ref": f"#/$defs/d{level + 1}/properties/root"}
        definitions[f"d{level}"] = {"properties": {"root": {"type": "object", "properties": {"a": nxt, "b": nxt}, "required": ["a", "b"]}}}
    definitions[f"d{depth}"] = {"properties": {"root": {"type": "integer"}}}
    return {"type": "object", "properties": {"x": {"$ref": "#/$defs/d0/properties/root"}}, "required": ["x"], "$defs": definitions}


# Each class of costly schema, with the words the 400 must contain.
HOSTILE = {
    "huge pattern repetition": (string(pattern="^x{0,200000000}$"), "{0,200000000}"),
    "huge fixed pattern repetition": (string(pattern="^(ab){99999}$"), "{99999}"),
    "alternation under a star": (string(pattern="^(a|" + "|".join("a" * 3 for _ in range(80)) + ")*$"), "alternatives"),
    "deep pattern groups": (string(pattern="^" + "(" * 20 + "a" + ")" * 20 + "$"), "nested deeper"),
    "lookahead": (string(pattern="^(?=a)a$"), "lookarounds"),
    "unanchored pattern": (string(pattern="a{5}"), "anchored"),
    "pattern repetitions that add up": (string(pattern="^" + "(abcdefgh){0,1000}" * 50 + "$"), "KiB"),
    "maxLength over the bound": (string(maxLength=10**9), "maxLength"),
    "maxItems over the bound": ({"type": "array", "items": {"type": "string"}, "maxItems": 5000}, "maxItems"),
    "lengths that add up": (
        {"type": "object", "properties": {f"p{i}": string(maxLength=1000) for i in range(60)}, "required": [f"p{i}" for i in range(60)]},
        "KiB",
    ),
    "long property paths": (nested(30, string(maxLength=1000)), "KiB"),
    "many optional properties": ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(200)}}, "optional properties"),
    "many properties in one object": (
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(300)}, "required": [f"p{i}" for i in range(300)]},
        "properties",
    ),
    "many properties in all": (
        {
            "type": "object",
            "properties": {
                f"o{j}": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(120)}, "required": [f"p{i}" for i in range(120)]}
                for j in range(10)
            },
            "required": [f"o{j}" for j in range(10)],
        },
        "in all",
    ),
    "too many alternatives": ({"anyOf": [{"type": "integer"}] * 500}, "entries"),
    "deep nesting": (nested(40, {"type": "integer"}, name="a"), "nesting deeper"),
    "huge enum": ({"enum": list(range(5000))}, "enum"),
    "long names": ({"type": "object", "properties": {"n" * 5000: {"type": "integer"}}}, "name longer"),
    "not JSON": (string(maxLength=float("nan")), "not plain JSON"),
    "nested counted repetition": (string(pattern="^(((a{0,10}){0,10}){0,10}){0,10}$"), "count '{0,10}'"),
    "counted alternation": (string(pattern="^(a|aa){5}$"), "different lengths"),
    "nested same-type alternatives": (alternatives_nested(128, 4), "readings"),
    "self-multiplying recursion": (
        {"$defs": {"L": {"anyOf": [{"type": "array", "items": {"$ref": "#/$defs/L"}}] * 2}}, "$ref": "#/$defs/L"},
        "refers back to itself",
    ),
    "allOf merging many properties": (
        {
            "$defs": {"A": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(250)}, "required": [f"p{i}" for i in range(250)]}},
            "allOf": [{"anyOf": [{"$ref": "#/$defs/A"}] * 15}],
        },
        "'allOf' merges",
    ),
    "format that is not a string": (string(format=["date"]), "format"),
    "reference that does not resolve": ({"$ref": "#/$defs/missing"}, "does not resolve"),
}

# The worst shapes within the bounds: each must compile in under a second and 64 MB.
WITHIN = {
    "pattern at the repetition bound": string(pattern="^x{0,1000}$"),
    "repeated groups": string(pattern="^" + "(abcdefghij){0,1000}" * 10 + "$"),
    "64 optional properties": {"type": "object", "properties": {f"p{i}": string() for i in range(64)}},
    "256 properties, 64 optional": {
        "type": "object",
        "properties": {f"p{i}": string() for i in range(256)},
        "required": [f"p{i}" for i in range(192)],
    },
    "nested arrays at the bound": {"type": "array", "items": {"type": "array", "items": string(maxLength=1000), "maxItems": 1000}, "maxItems": 1000},
    "1000-value enum": {"enum": [f"value-{i}" * 5 for i in range(1000)]},
    "100 alternatives": {"anyOf": [{"type": "object", "properties": {f"p{i}": string(maxLength=50)}, "required": [f"p{i}"]} for i in range(100)]},
    "deep but short names": nested(30, string(maxLength=200), name="n"),
    "nested alternatives at the width bound": alternatives_nested(16, 2),
    "references a converter re-expanded": refs_reexpanded(30),
    "recursive tree": {"type": "object", "properties": {"v": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#"}}}, "required": ["v"]},
    "optional recursive node": {
        "$defs": {"Node": {"type": "object", "properties": {"a": string(), "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}}},
        "$ref": "#/$defs/Node",
    },
    "nested unbounded repetition": string(pattern="^((a*)*(b|bb)*)*[a-z]{0,50}$"),
}

"""Local `$ref`s rewritten so that each target is one grammar rule, reached by a unique name.

llama-cpp-python's converter names a referenced rule after the last segment of the reference and
caches it by that name: two targets ending in the same segment (`#/$defs/a/properties/x` and
`#/$defs/b/properties/x`) got the same rule, so the wrong schema was enforced, and a target whose
name is reserved (`root`) was expanded again at every reference, exponentially in the nesting
(a 6 KB schema compiled for minutes). It also resolves references only against the document
root, so a tool's own `$defs`, nested under the combined tool-call schema, never resolved.

`hoist_refs` copies the schema, gives every local reference target a name of its own in one
root `$defs` (`<prefix>-<n>`, with a random prefix a client cannot guess or collide with), and
points every `$ref` there: each target is expanded exactly once, wherever it is referenced.
"""

from __future__ import annotations

import json
import secrets

from modelhost.engine.grammar_errors import GrammarError

DEFS = "$defs"
_DEF_CONTAINERS = ("$defs", "definitions")


def hoist_refs(schema: object, prefix: str | None = None) -> tuple[object, dict[str, object]]:
    """(a private copy of `schema` whose `$ref`s point at `#/$defs/<name>`, the `$defs` to put at the root).

    The returned schema has no root-level `$defs`/`definitions` of its own; the caller puts the
    returned definitions at the root of the document it compiles (with other schemas' definitions
    when it combines several, hence the prefix).
    """
    try:
        document = json.loads(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise GrammarError(f"The schema is not plain JSON: {exc}") from exc
    return _hoist(document, prefix)


def _hoist(document: object, prefix: str | None) -> tuple[object, dict[str, object]]:
    """`hoist_refs` on a document of the caller's own, rewritten in place."""
    tag = prefix or f"d{secrets.token_hex(4)}"
    names: dict[str, str] = {}
    targets: dict[str, object] = {}

    def name_for(ref: str) -> str:
        if ref not in names:
            names[ref] = f"{tag}-{len(names)}"
            targets[names[ref]] = _resolve(document, ref)
        return names[ref]

    pending: list[object] = [document]
    while pending:  # iterative, so a deep document cannot exhaust the stack
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#"):
                node["$ref"] = f"#/{DEFS}/{name_for(ref)}"
            pending.extend(v for k, v in node.items() if k != "$ref")
    definitions: dict[str, object] = {}
    for name, target in targets.items():
        if target is document and isinstance(document, dict):
            # A reference to the root: the root's own keywords, not its definitions (no cycle in JSON).
            target = {k: v for k, v in document.items() if k not in _DEF_CONTAINERS}
        definitions[name] = target
    if isinstance(document, dict):
        for key in _DEF_CONTAINERS:
            document.pop(key, None)
    return document, definitions


def with_hoisted_refs(encoded: str) -> object:
    """The schema JSON-encoded in `encoded`, with its references hoisted (`hoist_refs`) and the
    definitions at its root. (Decoding the text the caller already made is the private copy.)"""
    document, definitions = _hoist(json.loads(encoded), None)
    if not definitions:
        return document
    if not isinstance(document, dict):
        raise GrammarError("A schema with references must be an object.")
    return {**document, DEFS: definitions}


def inline_root_ref(schema: object) -> object:
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


def _resolve(document: object, ref: str) -> object:
    if ref == "#":
        return document
    if not ref.startswith("#/"):
        raise GrammarError(f"'$ref' {ref[:100]!r}: only local references ('#/…') are supported")
    target = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            raise GrammarError(f"'$ref' {ref[:100]!r} does not resolve")
    return target

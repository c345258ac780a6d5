"""Validate JSON bodies against the schemas of the official OpenAI OpenAPI spec.

The spec is the pinned ``spec/openai-openapi/openapi.yaml`` inside the repository (formerly a sibling of
the repository checkout), or the file named by ``MODELHOST_OPENAI_SPEC``.

The spec calls itself OpenAPI 3.1 (JSON Schema 2020-12) but still carries
OpenAPI 3.0 idioms that a JSON Schema validator would misread.
:func:`openapi_to_json_schema` rewrites them; everything else is used as
written, so a body that validates here validates against the spec as OpenAI
means it.

Typical use in a test::

    from support.openapi_spec import validate   # or a relative import
    validate("CreateChatCompletionResponse", response.json())
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "SPEC_ENV_VAR",
    "errors",
    "json_schema",
    "load_spec",
    "openapi_to_json_schema",
    "schema_names",
    "spec_path",
    "validate",
    "validator",
]

#: Environment variable that overrides the location of ``openapi.yaml``.
SPEC_ENV_VAR = "MODELHOST_OPENAI_SPEC"

#: At most this many errors are spelled out in an ``AssertionError``.
MAX_REPORTED_ERRORS = 10

# The rewritten document is registered under this URI so that the spec's
# own ``#/components/schemas/X`` references resolve inside it.
_DOCUMENT_URI = "urn:modelhost:openai-openapi"
_SCHEMAS_POINTER = "#/components/schemas/"

# Keywords whose value is a map of name -> subschema.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# Keywords whose value is a single subschema (``items`` may also be a list).
_SCHEMA_SINGLES = (
    "items",
    "additionalItems",
    "additionalProperties",
    "unevaluatedItems",
    "unevaluatedProperties",
    "propertyNames",
    "contains",
    "not",
    "if",
    "then",
    "else",
)
# Keywords whose value is a list of subschemas.
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
# Keywords that only describe; a schema made of nothing else asserts nothing.
_ANNOTATIONS = frozenset(
    {"description", "title", "default", "example", "examples", "deprecated", "readOnly", "writeOnly"}
)
# Keywords after which "add null to type/enum" would not be enough to admit null.
_NEEDS_WRAP = ("$ref", "allOf", "anyOf", "oneOf", "const", "not", "if")

_MESSAGE_LIMIT = 300


def spec_path() -> Path:
    """Return the path of the OpenAI ``openapi.yaml`` to validate against.

    ``$MODELHOST_OPENAI_SPEC`` wins when set; otherwise it is the copy pinned in the repository,
    ``spec/openai-openapi/openapi.yaml`` (its upstream commit in the README beside it).
    The file is not required to exist; :func:`load_spec` reports that.
    """
    override = os.environ.get(SPEC_ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    # parents: [0] tests/support, [1] tests, [2] the repository.
    return Path(__file__).resolve().parents[2] / "spec" / "openai-openapi" / "openapi.yaml"


def load_spec(path: Path | None = None) -> dict[str, Any]:
    """Return the parsed spec at ``path`` (default :func:`spec_path`), unmodified.

    Parsed once per process and path; the returned dict is shared, so do not
    mutate it. Raises ``FileNotFoundError`` naming the override variable when
    the file is missing.
    """
    return _load_spec(path or spec_path())


@functools.cache
def _load_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"OpenAI OpenAPI spec not found at {path}; it is pinned in the repository at spec/openai-openapi/ "
            f"(or set {SPEC_ENV_VAR} to the path of an openapi.yaml)"
        )
    # The C loader parses the ~3 MB file several times faster than the pure one.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as handle:
        document = yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader
    if not isinstance(document, dict) or not isinstance(
        document.get("components", {}).get("schemas"), dict
    ):
        raise ValueError(f"{path} has no components.schemas; is it an OpenAPI document?")
    return document


def schema_names(path: Path | None = None) -> set[str]:
    """Return the names under ``#/components/schemas`` of the spec (a fresh set)."""
    return set(load_spec(path)["components"]["schemas"])


def openapi_to_json_schema(schema: Any, recursive_target: str = "#") -> Any:
    """Return a JSON Schema 2020-12 equivalent of one OpenAPI schema object.

    The input is not modified. Rewrites, each because the OpenAPI 3.0 meaning
    differs from what a 2020-12 validator would do with the keyword:

    * ``nullable: true`` admits ``null``: added to ``type`` (string or list)
      and to ``enum``; a schema built on ``$ref``/``allOf``/``anyOf``/``oneOf``/
      ``const``/``not`` becomes ``anyOf: [<schema>, {type: "null"}]``.
      ``nullable: false`` is dropped.
    * An ``allOf`` member that is only ``{nullable: true}`` (plus annotations),
      the 3.0 idiom for a nullable ``$ref``, is removed and makes the schema
      that holds the ``allOf`` nullable.
    * Boolean ``exclusiveMinimum``/``exclusiveMaximum`` (3.0) become the
      numeric 2020-12 form using ``minimum``/``maximum``.
    * ``$recursiveRef`` (2019-09, ignored by 2020-12) becomes a ``$ref`` to
      ``recursive_target``, the schema that declares ``$recursiveAnchor``.
    * Duplicate names in ``required`` are dropped (same meaning; keeps the
      result valid under the 2020-12 meta-schema).

    Everything else (``additionalProperties``, ``format``, ``x-*``,
    ``discriminator``, ``example`` ...) is kept as is: unknown keywords are
    ignored by the validator and nothing is made stricter than the spec.
    """
    if not isinstance(schema, Mapping):
        return schema  # boolean schemas and malformed leaves pass through
    out: dict[str, Any] = dict(schema)
    # The spec puts $recursiveAnchor only on component roots, which callers
    # pass in as ``recursive_target``; 2020-12 has no use for the anchor.
    out.pop("$recursiveAnchor", None)
    if "$recursiveRef" in out:
        out.pop("$recursiveRef")
        out["$ref"] = recursive_target

    for keyword in _SCHEMA_MAPS:
        if isinstance(out.get(keyword), Mapping):
            out[keyword] = {
                name: openapi_to_json_schema(sub, recursive_target)
                for name, sub in out[keyword].items()
            }
    for keyword in _SCHEMA_SINGLES:
        if keyword in out:
            value = out[keyword]
            out[keyword] = (
                [openapi_to_json_schema(sub, recursive_target) for sub in value]
                if isinstance(value, list)
                else openapi_to_json_schema(value, recursive_target)
            )

    nullable = out.pop("nullable", False) is True
    for keyword in _SCHEMA_LISTS:
        if isinstance(out.get(keyword), list):
            members = out[keyword]
            if keyword == "allOf" and len(members) > 1:
                kept = [m for m in members if not _is_bare_nullable(m)]
                if len(kept) < len(members):
                    nullable = True
                    members = kept
            out[keyword] = [openapi_to_json_schema(sub, recursive_target) for sub in members]

    # The spec lists some required names twice; harmless to a validator, but
    # invalid under the 2020-12 meta-schema (uniqueItems), so keep one of each.
    if isinstance(out.get("required"), list):
        out["required"] = list(dict.fromkeys(out["required"]))

    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(exclusive), bool):
            if out.pop(exclusive) and bound in out:
                out[exclusive] = out.pop(bound)

    return _admit_null(out) if nullable else out


def _is_bare_nullable(schema: Any) -> bool:
    """True for ``{nullable: true}`` with nothing but annotations beside it."""
    return (
        isinstance(schema, Mapping)
        and schema.get("nullable") is True
        and all(key in _ANNOTATIONS or key == "nullable" for key in schema)
    )


def _admit_null(schema: dict[str, Any]) -> dict[str, Any]:
    """Return ``schema`` widened to also accept ``null``."""
    if any(keyword in schema for keyword in _NEEDS_WRAP):
        # Wrapping leaves the original untouched, so whatever the combinators
        # accept is still accepted.
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema.get("type")
    if isinstance(kind, str) and kind != "null":
        schema["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        schema["type"] = [*kind, "null"]
    # ``enum`` is checked independently of ``type``, so null must be listed.
    enum = schema.get("enum")
    if isinstance(enum, list) and None not in enum:
        schema["enum"] = [*enum, None]
    return schema


@functools.cache
def _rewritten_schemas(path: Path) -> dict[str, Any]:
    raw = _load_spec(path)["components"]["schemas"]
    return {
        name: openapi_to_json_schema(schema, _SCHEMAS_POINTER + name)
        for name, schema in raw.items()
    }


@functools.cache
def _registry(path: Path) -> Registry:
    # Only components.schemas is needed: every schema $ref in the spec points there.
    document = {"components": {"schemas": _rewritten_schemas(path)}}
    resource = DRAFT202012.create_resource(document)
    # No crawl(): the spec has no $id/$anchor, and JSON-pointer lookups need none.
    return Registry().with_resource(_DOCUMENT_URI, resource)


def json_schema(schema_name: str, path: Path | None = None) -> dict[str, Any]:
    """Return the rewritten JSON Schema of ``#/components/schemas/<schema_name>``.

    Its ``$ref``s stay relative to the spec document; use :func:`validator` to
    validate with them resolved. Raises ``KeyError`` for an unknown name.
    """
    resolved = path or spec_path()
    schemas = _rewritten_schemas(resolved)
    if schema_name not in schemas:
        close = difflib.get_close_matches(schema_name, schemas, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no schema {schema_name!r} in {resolved}{hint}")
    return schemas[schema_name]


def validator(schema_name: str, path: Path | None = None) -> Draft202012Validator:
    """Return a cached Draft 2020-12 validator for one component schema.

    ``format`` is not asserted (2020-12 treats it as an annotation, and the
    spec uses non-standard formats such as ``unixtime``).
    """
    return _validator(path or spec_path(), schema_name)


@functools.cache
def _validator(path: Path, schema_name: str) -> Draft202012Validator:
    json_schema(schema_name, path)  # raises a helpful KeyError for unknown names
    root = {"$ref": f"{_DOCUMENT_URI}{_SCHEMAS_POINTER}{schema_name}"}
    return Draft202012Validator(root, registry=_registry(path))


def errors(schema_name: str, instance: object, path: Path | None = None) -> list[str]:
    """Return one line per validation error, ``"<json path>: <message>"``, in
    document order; empty when ``instance`` is valid.

    For a failed ``anyOf``/``oneOf`` the line also names the closest branch's
    error, since "not valid under any of the given schemas" alone says little.
    """
    found = validator(schema_name, path).iter_errors(instance)
    return [_describe(error) for error in sorted(found, key=_path_key)]


def validate(schema_name: str, instance: object, path: Path | None = None) -> None:
    """Assert that ``instance`` validates against ``#/components/schemas/<schema_name>``.

    Raises ``AssertionError`` listing up to :data:`MAX_REPORTED_ERRORS`
    errors as ``<json path>: <message>``, and ``KeyError`` for an unknown
    schema name.
    """
    problems = errors(schema_name, instance, path)
    if not problems:
        return
    shown = problems[:MAX_REPORTED_ERRORS]
    count = f"{len(problems)} error" + ("s" if len(problems) > 1 else "")
    lines = [f"body does not match OpenAI schema {schema_name} ({count}):"]
    lines += [f"  {line}" for line in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    raise AssertionError("\n".join(lines))


def _path_key(error: ValidationError) -> tuple[tuple[int, int, str], ...]:
    # Paths mix ints and strings; tag each part so sorting never compares them.
    return tuple(
        (0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in error.absolute_path
    )


def _describe(error: ValidationError) -> str:
    line = f"{error.json_path}: {_shorten(error.message)}"
    if error.context:
        closest = best_match(error.context)
        line += f" (closest branch: {closest.json_path}: {_shorten(closest.message)})"
    return line


def _shorten(message: str) -> str:
    # Messages embed the offending instance, which can be a whole response body.
    if len(message) <= _MESSAGE_LIMIT:
        return message
    return message[: _MESSAGE_LIMIT - 3] + "..."

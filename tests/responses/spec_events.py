"""Validate a Responses stream event against the spec: its own event schema (for a readable error), then the union."""

from __future__ import annotations

import functools
from typing import Any

from support.openapi_spec import load_spec, validate


@functools.cache
def _schema_names() -> dict[str, str]:
    schemas = load_spec()["components"]["schemas"]
    union = schemas["ResponseStreamEvent"]
    names: dict[str, str] = {}
    for ref in union.get("anyOf", union.get("oneOf", [])):
        name = ref["$ref"].rsplit("/", 1)[-1]
        kind = schemas[name].get("properties", {}).get("type", {}).get("enum", [None])[0]
        if kind is not None:
            names[kind] = name
    return names


def validate_event(payload: dict[str, Any]) -> None:
    validate(_schema_names()[payload["type"]], payload)
    validate("ResponseStreamEvent", payload)

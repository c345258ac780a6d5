"""The requested output format → the grammar the answer's text must match."""

from __future__ import annotations

import re
from collections.abc import Sequence

from modelhost.engine.grammar import JSON_OBJECT_GRAMMAR, GrammarError, compile_schema
from modelhost.engine.schema_bounds import check_schema
from modelhost.errors import InvalidRequest
from modelhost.pipeline.inputs import Function, OutputFormat, Params

_MENTIONS_JSON = re.compile("json", re.IGNORECASE)


def response_grammar(
    output: OutputFormat | None,
    rendered_messages: Sequence[dict[str, object]],
    params: Params = Params(),
    *,
    tenant: str | None = None,
) -> str | None:
    """The GBNF for the requested format, or None for free text; 400 when it cannot be honoured.

    `tenant`: the organization whose turn the compile takes (engine/grammar_compiler.py)."""
    if output is None or output.kind == "text":
        return None
    if output.kind == "json_object":
        if not any(_MENTIONS_JSON.search(str(m.get("content", ""))) for m in rendered_messages):
            raise InvalidRequest(
                f"'{params.messages}' must contain the word 'json' in some form, to use '{params.response_format}' of type "
                "'json_object'.",
                param=params.messages,
                code="invalid_value",
            )
        return JSON_OBJECT_GRAMMAR
    if output.schema is None:
        raise InvalidRequest(
            f"Missing required parameter: '{params.response_format}.json_schema.schema'.",
            param=f"{params.response_format}.json_schema.schema",
            code="missing_required_parameter",
        )
    try:
        return compile_schema(dict(output.schema), tenant=tenant)
    except GrammarError as exc:
        raise InvalidRequest(
            f"Invalid schema for {params.response_format} '{output.name}': {exc}", param=params.response_format, code="invalid_value"
        ) from exc


def check_forwarded_schemas(output: OutputFormat | None, functions: Sequence[Function], params: Params = Params()) -> None:
    """The same schema bounds for a request an upstream engine will compile: 400 before it is sent.

    An upstream (vLLM, another OpenAI-compatible server) compiles schemas with its own code and
    its own weaknesses; nothing a tenant sends through modelhost may cost it more than it would
    cost modelhost's own compiler.
    """
    if output is not None and output.kind == "json_schema" and output.schema is not None:
        try:
            check_schema(dict(output.schema))
        except GrammarError as exc:
            raise InvalidRequest(
                f"Invalid schema for {params.response_format} '{output.name}': {exc}", param=params.response_format, code="invalid_value"
            ) from exc
    for i, function in enumerate(functions):
        if function.parameters is None:
            continue
        try:
            check_schema(dict(function.parameters))
        except GrammarError as exc:
            raise InvalidRequest(
                f"Invalid schema for function '{function.name}': {exc}",
                param=f"{params.tools}[{i}].function.parameters",
                code="invalid_value",
            ) from exc

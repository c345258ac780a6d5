"""`response_format` → the grammar the content must match."""

from __future__ import annotations

import re

from modelhost.engine.grammar import JSON_OBJECT_GRAMMAR, GrammarError, compile_schema
from modelhost.engine.schema_bounds import check_schema
from modelhost.errors import InvalidRequest
from modelhost.protocol.chat import (
    ChatCompletionRequest,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)

_MENTIONS_JSON = re.compile("json", re.IGNORECASE)


def response_grammar(
    request: ChatCompletionRequest, rendered_messages: list[dict[str, object]], *, tenant: str | None = None
) -> str | None:
    """The GBNF for the requested format, or None for free text; 400 when it cannot be honoured.

    `tenant`: the organization whose turn the compile takes (engine/grammar_compiler.py)."""
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJsonObject):
        if not any(_MENTIONS_JSON.search(str(m.get("content", ""))) for m in rendered_messages):
            raise InvalidRequest(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                param="messages",
                code="invalid_value",
            )
        return JSON_OBJECT_GRAMMAR
    if isinstance(fmt, ResponseFormatJsonSchema):
        schema = fmt.json_schema.schema_
        if schema is None:
            raise InvalidRequest(
                "Missing required parameter: 'response_format.json_schema.schema'.",
                param="response_format.json_schema.schema",
                code="missing_required_parameter",
            )
        try:
            return compile_schema(schema, tenant=tenant)
        except GrammarError as exc:
            raise InvalidRequest(
                f"Invalid schema for response_format '{fmt.json_schema.name}': {exc}",
                param="response_format",
                code="invalid_value",
            ) from exc
    return None


def check_forwarded_schemas(request: ChatCompletionRequest) -> None:
    """The same schema bounds for a request an upstream engine will compile: 400 before it is sent.

    An upstream (vLLM, another OpenAI-compatible server) compiles schemas with its own code and
    its own weaknesses; nothing a tenant sends through modelhost may cost it more than it would
    cost modelhost's own compiler.
    """
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJsonSchema) and fmt.json_schema.schema_ is not None:
        try:
            check_schema(fmt.json_schema.schema_)
        except GrammarError as exc:
            raise InvalidRequest(
                f"Invalid schema for response_format '{fmt.json_schema.name}': {exc}", param="response_format", code="invalid_value"
            ) from exc
    functions = request.functions or [t.function for t in request.tools or []]
    param = "functions" if request.functions else "tools"
    for i, function in enumerate(functions):
        if function.parameters is None:
            continue
        try:
            check_schema(function.parameters)
        except GrammarError as exc:
            raise InvalidRequest(
                f"Invalid schema for function '{function.name}': {exc}", param=f"{param}[{i}].function.parameters", code="invalid_value"
            ) from exc

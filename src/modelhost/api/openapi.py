"""`GET /openapi.json`: the server's own OpenAPI document, for holders of a key (inference or admin) only.

Interactive docs (/docs, /redoc) are off. The document FastAPI derives from the routes is made to
say what the server really does, since clients and the contract fuzzer (tests/security) rely on it:
- every operation needs ``Authorization: Bearer`` (a security scheme);
- every error a request can meet — from the route, the auth dependency, the middleware (408, 413,
  504), overload (503) or limits (429) — is documented with OpenAI's error envelope, and the 422
  FastAPI would list is gone (validation errors are 400 here);
- operations that take ``stream`` document their ``text/event-stream`` answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from modelhost.api.deps import app_state, header_check, in_thread
from modelhost.auth import Principal
from modelhost.errors import PermissionDenied
from modelhost.protocol.common import ErrorResponse


@header_check
async def any_key(request: Request) -> Principal:
    """Any valid key of this server: an inference key, or an admin key (which the inference routes refuse)."""
    authenticator = app_state(request).authenticator
    authorization = request.headers.getlist("authorization")
    organization = request.headers.get("openai-organization")

    def check() -> Principal:
        try:
            return authenticator.authenticate(authorization, organization, request.headers.get("openai-project"))
        except PermissionDenied:
            return authenticator.authenticate_admin(authorization, organization)

    who = await in_thread(check)
    request.state.principal = who
    return who


router = APIRouter(dependencies=[Depends(any_key)])

_ERRORS = {
    "400": "Invalid request (OpenAI's `param` names the field).",
    "401": "Missing, malformed, unknown or revoked API key.",
    "403": "The key may not do this.",
    "404": "Unknown URL, model or object (or one the caller may not see).",
    "408": "The request body did not arrive in time.",
    "413": "Request body over the configured limit.",
    "429": "Rate limit or quota exceeded.",
    "500": "Unexpected server error (the message carries the request id).",
    "503": "Overloaded or shutting down; retry after Retry-After.",
    "504": "The request took longer than the server's deadline.",
}
_SCHEMAS = "#/components/schemas/"


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed document described in the module docstring."""
    derive = app.openapi
    done: list[bool] = []

    def openapi() -> dict[str, Any]:
        document = derive()  # FastAPI caches it in app.openapi_schema
        if not done:
            _complete(document)
            done.append(True)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _error_schemas() -> dict[str, Any]:
    schema = ErrorResponse.model_json_schema(ref_template=_SCHEMAS + "{model}")
    found = schema.pop("$defs", {})
    return {**found, "ErrorResponse": schema}


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    if ref.startswith(_SCHEMAS):
        return document["components"]["schemas"].get(ref[len(_SCHEMAS):], {})  # type: ignore[no-any-return]
    return schema


def _complete(document: dict[str, Any]) -> None:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in _error_schemas().items():
        schemas.setdefault(name, schema)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    error = {"application/json": {"schema": {"$ref": _SCHEMAS + "ErrorResponse"}}}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation["security"] = [{"bearerAuth": []}]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in _ERRORS.items():
                responses.setdefault(status, {"description": description, "content": error})
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "stream" in _resolve(document, body).get("properties", {}) and "200" in responses:
                content = responses["200"].setdefault("content", {})
                # No type: validators read this as the schema of each event's data, which is a JSON
                # chunk (or error) object and finally the text `[DONE]`; the tests check every chunk
                # against the official spec's chunk schema instead.
                content["text/event-stream"] = {
                    "schema": {"description": "Server-sent events: `data: {chunk}` lines, then `data: [DONE]`."}
                }

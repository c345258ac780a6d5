"""Every error leaves the server in OpenAI's envelope, with the right status and never internals."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from modelhost.engine.base import EngineError
from modelhost.errors import APIError, InvalidRequest, RouteError, ServerError
from modelhost.pipeline.engine_errors import client_error

logger = logging.getLogger(__name__)


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


# Tags of our discriminated unions (message roles, content part types): pydantic puts the tag in
# the error location (`messages.0.user.content`); OpenAI's `param` does not.
_UNION_TAGS = {"system", "developer", "user", "assistant", "tool", "function", "text", "image_url", "input_audio", "file", "refusal"}
_UNKNOWN = object()  # where the body has nothing at a location (or there is no body to look in)


def _is_label(part: str, node: object, last: bool) -> bool:
    """Whether `part` of an error location is pydantic's branch label rather than a field name.

    Pydantic writes a union's branch into the location: a tagged union's tag (`messages.0.user`,
    `response_format.json_schema.json_schema`), a plain union's type (`content.str`,
    `tool_choice.NamedToolChoice`). A tag can also be a real field's name (`tools.0.function.name`,
    `tool_calls.0.function.arguments`), so the body decides: a name is a field when the object at
    that point has it, or when it ends the location (a missing field).
    """
    if part.startswith("function-") or part == "str" or "[" in part:
        return True  # validator and type labels (`list[tagged-union[...]]`) are never field names
    if isinstance(node, dict):
        return part not in node and not last
    if node is _UNKNOWN:
        return False
    return True  # below a string, number or list only a branch label can follow


def _param(loc: tuple[object, ...], body: object = _UNKNOWN) -> str | None:
    """``("body", "messages", 0, "user", "content")`` → ``"messages[0].content"`` (OpenAI's notation).

    `body` is the parsed request body the location points into; without it (or outside the body)
    a name after an index that is one of our union tags is taken for a tag.
    """
    in_body = bool(loc) and loc[0] == "body"
    parts = loc[1:] if in_body else loc
    node = body if in_body and isinstance(body, dict) else _UNKNOWN  # a body that is no object has no fields to find
    text = ""
    previous: object = None
    for i, part in enumerate(parts):
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else _UNKNOWN
        elif isinstance(part, str):
            unknown_tag = node is _UNKNOWN and isinstance(previous, int) and part in _UNION_TAGS
            if not (unknown_tag or _is_label(part, node, last=i == len(parts) - 1)):
                text += f".{part}" if text else part
                node = node[part] if isinstance(node, dict) and part in node else _UNKNOWN
        previous = part
    return text or None


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return InvalidRequest("The request body is invalid.")
    # Text that is not valid Unicode (`WireModel`) is named over a union's other branches' type errors.
    first = next((e for e in errors if e.get("type") == "invalid_unicode"), errors[0])
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload; "
            "check that the body is valid JSON and the Content-Type is application/json."
        )
    loc = tuple(first.get("loc", ()))
    param = _param(loc, exc.body)
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind in ("model_attributes_type", "dict_type") and param is None:
        return InvalidRequest("The request body must be a JSON object, sent with Content-Type: application/json.", code="invalid_type")
    message = str(first.get("msg", "invalid value"))
    if kind in ("union_tag_invalid", "literal_error") or kind.endswith("_type") or kind.endswith("_parsing"):
        code = "invalid_type"
    else:
        code = "invalid_value"
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param, code=code)


def _allowed_methods(request: Request) -> list[str]:
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        # One the pipeline did not already translate: raised while the request was planned (a busy schema compiler).
        return error_response(client_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Invalid method for URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        error = RouteError(message, exc.status_code)
        error.headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Allow lists every method of the path, not just the first route's
            error.headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "unknown")
        logger.exception("unhandled error in request %s", request_id)
        return error_response(
            ServerError(
                "The server had an error while processing your request. Retry, and if the error "
                f"persists report the request id {request_id}."
            )
        )

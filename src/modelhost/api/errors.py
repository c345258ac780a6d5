"""Every error leaves the server in OpenAI's envelope, with the right status and never internals."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from modelhost.errors import APIError, InvalidRequest, RouteError, ServerError

logger = logging.getLogger(__name__)


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


# Tags of our discriminated unions (message roles, content part types): pydantic puts the tag in
# the error location (`messages.0.user.content`); OpenAI's `param` does not.
_UNION_TAGS = {"system", "developer", "user", "assistant", "tool", "function", "text", "image_url", "input_audio", "file", "refusal"}


def _param(loc: tuple[object, ...]) -> str | None:
    """``("body", "messages", 0, "user", "content")`` → ``"messages[0].content"`` (OpenAI's notation)."""
    parts = [p for p in loc if p != "body"]
    text = ""
    previous: object = None
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and (
            part.startswith("function-") or part == "str" or "[" in part or (isinstance(previous, int) and part in _UNION_TAGS)
        ):
            pass  # pydantic's union branch labels
        else:
            text += f".{part}" if text else str(part)
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
    param = _param(loc)
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

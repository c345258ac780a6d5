"""What every Administration API route shares: admin-key auth, its `Scope`, and query parameters.

Query parameters are parsed here rather than by FastAPI so that both spellings of arrays the
clients send (``project_ids=a&project_ids=b`` and the SDK's ``project_ids[]=a``) and nested
bounds (``effective_at[gte]=…``) work, and so that a bad value is OpenAI's 400 naming the
parameter. `query_doc` puts the same model into the OpenAPI document.
"""

from __future__ import annotations

import re
import typing
from typing import Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.api.deps import app_state, header_check, in_thread
from modelhost.auth import Principal
from modelhost.errors import InvalidRequest
from modelhost.organization import Scope
from modelhost.protocol.common import ErrorResponse, stored_text

Q = TypeVar("Q", bound=BaseModel)
_NESTED = re.compile(r"^([A-Za-z_]+)\[([A-Za-z_]+)\]$")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404)
}


@header_check
async def admin_principal(request: Request) -> Principal:
    """Authenticate with an admin key (attached to every admin router, so no route can forget it)."""
    state = app_state(request)
    return await in_thread(
        state.authenticator.authenticate_admin,
        request.headers.getlist("authorization"),
        request.headers.get("openai-organization"),
    )


async def admin_scope(who: Principal = Depends(admin_principal)) -> Scope:
    return Scope.of(who)


def stored_path_params(request: Request) -> None:
    """Every path parameter (an id the store is asked for) is text the store can hold: else a 400 naming it.

    Bodies and query parameters get the same rule from their models (`StoredStr`).
    """
    for name, value in request.path_params.items():
        try:
            stored_text(value)
        except PydanticCustomError as exc:
            raise InvalidRequest(f"Invalid value for '{name}': {exc.message()}.", param=name, code="invalid_value") from None


def sessions(request: Request) -> sessionmaker[Session]:
    return app_state(request).sessions


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) is list


def parse_query(request: Request, model: type[Q]) -> Q:
    """The query string as `model`; a bad value is a 400 naming the parameter."""
    lists = {name for name, field in model.model_fields.items() if _is_list(field.annotation)}
    data: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        name = key[:-2] if key.endswith("[]") else key
        nested = _NESTED.match(name)
        if nested:
            outer = data.setdefault(nested[1], {})
            if isinstance(outer, dict):
                outer[nested[2]] = value
        elif name in lists:
            data.setdefault(name, []).append(value)
        else:
            data[name] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if isinstance(p, str)) or None
        if first["type"] == "missing":
            raise InvalidRequest(
                f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
            ) from None
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value") from None


def query_doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` describing `model` as query parameters."""
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})
    parameters = []
    for name, field in model.model_fields.items():
        prop = dict(schema["properties"][name])
        ref = prop.pop("$ref", None) or next((s["$ref"] for s in prop.get("anyOf", []) if "$ref" in s), None)
        if ref:
            prop = {**definitions[ref.rsplit("/", 1)[-1]], **{k: v for k, v in prop.items() if k != "anyOf"}}
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": field.is_required(), "schema": prop}
        if field.description:
            parameter["description"] = field.description
        if prop.get("type") == "object":
            parameter.update(style="deepObject", explode=True)
        parameters.append(parameter)
    return {"parameters": parameters}

"""`GET /v1/chat/completions`, `GET/POST/DELETE /v1/chat/completions/{id}`, `GET …/{id}/messages`: stored completions.

Thin routes over `chat_completions.stored`; a completion is stored by `POST /v1/chat/completions`
with `store: true` (api/chat.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.admin.deps import parse_query, query_doc, stored_path_params
from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.chat_completions import stored
from modelhost.errors import InvalidRequest
from modelhost.protocol.common import ErrorResponse, stored_text
from modelhost.protocol.responses import MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE
from modelhost.protocol.stored_chat import (
    ChatCompletionDeleted,
    ChatCompletionList,
    ChatCompletionListQuery,
    ChatCompletionMessageList,
    ChatCompletionUpdateRequest,
    MessageListQuery,
    StoredChatCompletion,
)

router = APIRouter(
    prefix="/v1/chat/completions",
    tags=["Chat"],
    dependencies=[Depends(principal), Depends(stored_path_params)],
    responses={status: {"model": ErrorResponse} for status in (400, 401, 404)},
)


# `metadata[key]=value` is parsed beside the query model (`_metadata_filter`): keys may be any text.
METADATA_FILTER = {
    "name": "metadata",
    "in": "query",
    "required": False,
    "style": "deepObject",
    "explode": True,
    "schema": {"type": "object", "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE}, "maxProperties": MAX_METADATA_PAIRS},
    "description": "Only the completions that have every one of these metadata pairs: metadata[key1]=value1&metadata[key2]=value2.",
}
LIST_QUERY = {"parameters": [*query_doc(ChatCompletionListQuery)["parameters"], METADATA_FILTER]}


@router.get("", response_model=ChatCompletionList, response_model_exclude_unset=True, openapi_extra=LIST_QUERY)
def list_chat_completions(request: Request, who: Principal = Depends(principal)) -> ChatCompletionList:
    query = parse_query(request, ChatCompletionListQuery)
    return stored.list_completions(app_state(request).sessions, who, query, _metadata_filter(request))


@router.get("/{completion_id}", response_model=StoredChatCompletion, response_model_exclude_unset=True)
def get_chat_completion(completion_id: str, request: Request, who: Principal = Depends(principal)) -> StoredChatCompletion:
    return stored.get(app_state(request).sessions, who, completion_id)


@router.post("/{completion_id}", response_model=StoredChatCompletion, response_model_exclude_unset=True)
def update_chat_completion(
    completion_id: str, body: ChatCompletionUpdateRequest, request: Request, who: Principal = Depends(principal)
) -> StoredChatCompletion:
    return stored.update(app_state(request).sessions, who, completion_id, body)


@router.delete("/{completion_id}", response_model=ChatCompletionDeleted)
def delete_chat_completion(completion_id: str, request: Request, who: Principal = Depends(principal)) -> ChatCompletionDeleted:
    return stored.delete(app_state(request).sessions, who, completion_id)


@router.get(
    "/{completion_id}/messages",
    response_model=ChatCompletionMessageList,
    response_model_exclude_unset=True,
    openapi_extra=query_doc(MessageListQuery),
)
def list_chat_completion_messages(
    completion_id: str, request: Request, who: Principal = Depends(principal)
) -> ChatCompletionMessageList:
    query = parse_query(request, MessageListQuery)
    return stored.messages(app_state(request).sessions, who, completion_id, query)


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` pairs of the query string (any key text), within the bounds metadata has."""
    pairs: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not (name.startswith("metadata[") and name.endswith("]")):
            continue
        key = name[len("metadata[") : -1]
        if len(pairs) >= MAX_METADATA_PAIRS or not 0 < len(key) <= MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} pairs, keys of 1 to {MAX_METADATA_KEY} characters, "
                f"values of at most {MAX_METADATA_VALUE}.",
                param="metadata",
                code="invalid_value",
            )
        try:
            pairs[stored_text(key)] = stored_text(value)
        except ValueError:  # PydanticCustomError: a NUL or an unpaired surrogate
            raise InvalidRequest("Invalid 'metadata': keys and values must be text.", param="metadata", code="invalid_value") from None
    return pairs

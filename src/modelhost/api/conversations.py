"""`/v1/conversations`, `…/{conversation_id}`, `…/{conversation_id}/items` and `…/items/{item_id}`.

Thin routes over `modelhost.conversations`: inference keys (as for chat completions), the
caller's project only. `include` is read in both spellings the clients send (`include[]=…`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request

from modelhost import conversations
from modelhost.api.admin.deps import ERRORS, parse_query, query_doc, stored_path_params
from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.protocol.conversations import (
    Conversation,
    CreateConversation,
    CreateConversationItems,
    DeletedConversation,
    ItemListQuery,
    ItemQuery,
    UpdateConversation,
)
from modelhost.protocol.responses import ItemList

router = APIRouter(
    prefix="/v1/conversations",
    tags=["Conversations"],
    dependencies=[Depends(principal), Depends(stored_path_params)],
    responses=ERRORS,
)


@router.post("", response_model=Conversation)
def create_conversation(
    request: Request, body: CreateConversation | None = None, who: Principal = Depends(principal)
) -> Conversation:
    state = app_state(request)
    retention = timedelta(days=state.settings.stored_objects_retention_days)
    return conversations.create(state.sessions, who, body or CreateConversation(), retention=retention)


@router.get("/{conversation_id}", response_model=Conversation)
def retrieve_conversation(conversation_id: str, request: Request, who: Principal = Depends(principal)) -> Conversation:
    return conversations.retrieve(app_state(request).sessions, who, conversation_id)


@router.post("/{conversation_id}", response_model=Conversation)
def update_conversation(
    conversation_id: str, body: UpdateConversation, request: Request, who: Principal = Depends(principal)
) -> Conversation:
    return conversations.update(app_state(request).sessions, who, conversation_id, body)


@router.delete("/{conversation_id}", response_model=DeletedConversation)
def delete_conversation(
    conversation_id: str, request: Request, who: Principal = Depends(principal)
) -> DeletedConversation:
    return conversations.delete(app_state(request).sessions, who, conversation_id)


@router.post("/{conversation_id}/items", response_model=ItemList, openapi_extra=query_doc(ItemQuery))
def create_items(
    conversation_id: str, body: CreateConversationItems, request: Request, who: Principal = Depends(principal)
) -> ItemList:
    include = parse_query(request, ItemQuery).include
    return conversations.add_items(app_state(request).sessions, who, conversation_id, body, include=include)


@router.get("/{conversation_id}/items", response_model=ItemList, openapi_extra=query_doc(ItemListQuery))
def list_items(conversation_id: str, request: Request, who: Principal = Depends(principal)) -> ItemList:
    query = parse_query(request, ItemListQuery)
    return conversations.list_items(app_state(request).sessions, who, conversation_id, query)


@router.get("/{conversation_id}/items/{item_id}", openapi_extra=query_doc(ItemQuery))
def retrieve_item(conversation_id: str, item_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    include = parse_query(request, ItemQuery).include
    return conversations.retrieve_item(app_state(request).sessions, who, conversation_id, item_id, include=include)


@router.delete("/{conversation_id}/items/{item_id}", response_model=Conversation)
def delete_item(conversation_id: str, item_id: str, request: Request, who: Principal = Depends(principal)) -> Conversation:
    return conversations.delete_item(app_state(request).sessions, who, conversation_id, item_id)

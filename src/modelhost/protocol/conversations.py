"""`/v1/conversations`: the request bodies and the objects, as OpenAI defines them.

The items themselves are the Responses API's (`protocol.responses`: messages, function calls and
their outputs, item references), stored and listed in the same shape; a page of them is its
`ItemList`.

    >>> CreateConversation.model_validate({"metadata": {"topic": "demo"}}).metadata
    {'topic': 'demo'}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from modelhost.protocol.admin.common import Id, QueryModel
from modelhost.protocol.common import WireModel
from modelhost.protocol.responses import MAX_INCLUDE, Includable, InputItem, Metadata

#: The most items one request may add (the spec's `maxItems` on both bodies).
MAX_ITEMS_PER_REQUEST = 20

NewItems = Annotated[list[InputItem], Field(max_length=MAX_ITEMS_PER_REQUEST)]


class CreateConversation(WireModel):
    """The body of `POST /v1/conversations`: both fields may be left out or null (metadata: 16 pairs, keys ≤ 64, values ≤ 512 characters)."""

    metadata: Metadata | None = None
    items: NewItems | None = None


class UpdateConversation(WireModel):
    """The body of `POST /v1/conversations/{id}`: the new metadata, replacing the old (null clears it)."""

    metadata: Metadata | None


class CreateConversationItems(WireModel):
    """The body of `POST /v1/conversations/{id}/items`: one to 20 items."""

    items: Annotated[list[InputItem], Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)]


class Conversation(BaseModel):
    """The spec's ConversationResource."""

    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str]


class DeletedConversation(BaseModel):
    """The spec's DeletedConversationResource."""

    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: Literal[True] = True


class ItemQuery(QueryModel):
    """`include` of the item routes (`include[]=…` as the SDKs send it): accepted, checked against the spec's list."""

    include: Annotated[list[Includable], Field(max_length=MAX_INCLUDE)] = Field(default_factory=list)


class ItemListQuery(ItemQuery):
    """`GET /v1/conversations/{id}/items`: a page of at most `limit` items after `after`, newest first by default."""

    limit: int = Field(default=20, ge=1, le=100, description="How many items to return, 1 to 100.")
    order: Literal["asc", "desc"] = Field(default="desc", description="asc: in the order added; desc: newest first.")
    after: Id | None = Field(default=None, description="Return the items after this item id (the previous page's last_id).")

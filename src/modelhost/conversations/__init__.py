"""The Conversations API as plain functions: a session factory and the caller's `Principal` in, wire objects out.

`api/conversations.py` calls them; the Responses API reads and extends a conversation through
`store.conversations` (`conversation_items`, `append_items`) inside its own transaction.
"""

from modelhost.conversations.items import add_items, delete_item, list_items, retrieve_item
from modelhost.conversations.objects import create, delete, retrieve, update

__all__ = ["add_items", "create", "delete", "delete_item", "list_items", "retrieve", "retrieve_item", "update"]

"""Identifiers in OpenAI's shapes: `org-…`, `proj_…`, `user-…`, `key_…`, `chatcmpl-…`."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """A random id such as ``new_id("org-") == "org-3fQ…"`` (alphanumeric tail)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))

"""Turns a bearer token into a `Principal`; nothing downstream sees a raw key.

`auth.policy` (roles and permissions) is imported by `store`, which the authenticator itself
reads; so the package loads `Authenticator` only when it is asked for, not on import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelhost.auth.principal import Principal

if TYPE_CHECKING:
    from modelhost.auth.authenticator import Authenticator

__all__ = ["Authenticator", "Principal"]


def __getattr__(name: str) -> Any:
    if name == "Authenticator":
        from modelhost.auth.authenticator import Authenticator

        return Authenticator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Turns a bearer token into a `Principal`; nothing downstream sees a raw key."""

from modelhost.auth.authenticator import Authenticator
from modelhost.auth.principal import Principal

__all__ = ["Authenticator", "Principal"]

"""Secret keys: made from 256 random bits, stored as SHA-256, shown once.

A user key looks like ``sk-<43 chars>``, a project key ``sk-proj-<43 chars>``, a service-account key
``sk-svcacct-<43 chars>`` and an admin key ``sk-admin-<43 chars>``. The hash is a plain SHA-256: the
secret is uniformly random, so a slow password hash would add latency and no safety.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

PREFIXES = {"user": "sk-", "project": "sk-proj-", "service_account": "sk-svcacct-", "admin": "sk-admin-"}
MAX_TOKEN_LENGTH = 256


@dataclass(frozen=True)
class NewSecret:
    secret: str
    secret_hash: str
    redacted_value: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def redact(secret: str) -> str:
    """What listings show instead of the secret: ``sk-proj-****abcd``."""
    prefix = max((p for p in PREFIXES.values() if secret.startswith(p)), key=len, default="sk-")
    return f"{prefix}****{secret[-4:]}"


def new_secret(kind: str) -> NewSecret:
    secret = PREFIXES[kind] + secrets.token_urlsafe(32)  # 32 bytes = 256 bits
    return NewSecret(secret=secret, secret_hash=hash_secret(secret), redacted_value=redact(secret))


def is_well_formed(token: str) -> bool:
    """Cheap shape check done before any store lookup: printable ASCII, our prefix, bounded length."""
    if not token.startswith("sk-") or len(token) > MAX_TOKEN_LENGTH:
        return False
    return all(33 <= ord(ch) <= 126 for ch in token)

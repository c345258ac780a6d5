"""Per-organization salts for prefix caches modelhost does not own (vLLM in-process, upstream servers).

vLLM (0.9 and later, V1 engine) mixes a request's ``cache_salt`` into the hash of its first KV
block, so two requests share cached blocks only when their salts are equal. modelhost salts every
request with its organization: tenants never reuse each other's prefixes, so neither
`cached_tokens` nor time to first token can tell organization B that A sent a prompt.

``CacheSalts(secret).of("org-abc") -> "Xr3…"`` is HMAC-SHA256(secret, organization id), base64url:
stable for an organization (its own prefixes keep being reused, across restarts and replicas when
they share `MODELHOST_CACHE_SALT_SECRET`), and not guessable from the organization id, which
tenants see. With ``shared=True`` (`MODELHOST_SHARE_PREFIX_ACROSS_ORGANIZATIONS`, the operator's
explicit choice) `of` returns None: no salt, one cache for everyone, as for the llama.cpp engine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


class CacheSalts:
    """See the module docstring."""

    def __init__(self, secret: bytes, *, shared: bool = False) -> None:
        assert len(secret) >= 16, "a cache salt secret needs at least 16 bytes"
        self._secret = secret
        self.shared = shared

    def of(self, scope: str) -> str | None:
        """The salt for `scope` (an organization id), or None when prefixes are shared by everyone."""
        if self.shared:
            return None
        digest = hmac.new(self._secret, b"modelhost-cache-salt\0" + scope.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

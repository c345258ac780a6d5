"""`modelhost serve` processes running batches: one on SQLite killed with SIGKILL and restarted, two
sharing a fresh PostgreSQL database. Leases are short (`LEASE_SECONDS`) so a killed replica's lines are
taken over within seconds; heartbeats are 1 s so its pending ledger rows are swept as quickly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from serverproc import MODEL, ServerProcess, private_database

LEASE_SECONDS = 3.0
ENV = {
    "MODELHOST_BATCH_POLL_SECONDS": "0.5",
    "MODELHOST_BATCH_LEASE_SECONDS": str(LEASE_SECONDS),
    "MODELHOST_BATCH_CONCURRENCY_PER_BATCH": "2",
    "MODELHOST_LEDGER_HEARTBEAT_SECONDS": "1",
    "MODELHOST_EMBEDDING_MODEL_ENABLED": "false",
    "MODELHOST_SLOTS": "2",
    "MODELHOST_THREADS": "1",
}


def batch_input(count: int, max_tokens: int = 12) -> bytes:
    """`count` short chat requests of the bundled model, one per line, custom_ids r0…"""
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": max_tokens, "seed": i},
        }
        for i in range(count)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def client_of(server: ServerProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=secret, max_retries=2, timeout=60)


def wait_for(client: openai.OpenAI, batch_id: str, done: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            batch = client.batches.retrieve(batch_id)
        except openai.APIConnectionError:  # the replica asked is restarting
            batch = None
        if batch is not None and done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch did not get there in {timeout}s: {batch}"
        time.sleep(0.3)


@pytest.fixture
def postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database for each test (its ledger holds only that test's batch)."""
    with private_database("modelhost_batches") as url:
        yield url

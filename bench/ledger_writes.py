"""What the ledger costs a request: one row insert at the end (before issue #12) against a pending row
at admission plus its settlement (`LedgerWriter.admit` + `LedgerWriter.settle`, after).

    .venv/bin/python bench/ledger_writes.py [--requests 500] [--postgres postgresql://postgres@127.0.0.1:5432/test]

Each shape runs on SQLite (WAL, as the server opens it) and, with --postgres, on a fresh schema of
that database, sequentially and with 8 requests at a time, through worker threads as the server
does. Prints one JSON line per case: microseconds of ledger time per request (mean, p50, p95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import anyio
import psycopg

from modelhost.pipeline.ledger_writer import LedgerWriter
from modelhost.store import UsageEntry, UsageLedger, migrate, open_engine, session_factory


def _entry(request_id: str, outcome: str, completion: int = 0) -> UsageEntry:
    return UsageEntry(
        request_id=request_id,
        created_at=datetime.now(timezone.utc),
        organization_id="org-bench",
        project_id="proj-bench",
        user_id=None,
        api_key_id="key_bench",
        model="m",
        operation="chat.completions",
        prompt_tokens=40,
        completion_tokens=completion,
        outcome=outcome,
    )


async def _one(shape: str, ledger: UsageLedger, writer: LedgerWriter, request_id: str) -> float:
    started = time.perf_counter()
    if shape == "insert at the end (before)":
        await anyio.to_thread.run_sync(ledger.record, _entry(request_id, "completed", 16))
    else:
        await writer.admit(_entry(request_id, "pending"))
        await writer.settle(_entry(request_id, "completed", 16))
    return time.perf_counter() - started


async def _run(shape: str, ledger: UsageLedger, requests: int, concurrency: int) -> list[float]:
    writer = LedgerWriter(ledger, heartbeat=3600)
    times: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            times.append(await _one(shape, ledger, writer, f"req-{uuid.uuid4().hex}"))

    await asyncio.gather(*(one(i) for i in range(requests)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--postgres", help="a PostgreSQL database to measure in (a schema of its own, dropped after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stores = [("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", None)]
        if args.postgres:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            stores.append(("postgresql", f"{args.postgres}?options=-csearch_path%3D{schema}", schema))
        try:
            for kind, url, _ in stores:
                engine = open_engine(url)
                migrate(engine)
                ledger = UsageLedger(session_factory(engine))
                for concurrency in (1, 8):
                    for shape in ("insert at the end (before)", "pending row + settle (after)"):
                        asyncio.run(_run(shape, ledger, 20, concurrency))  # warm the pool and the caches
                        times = sorted(asyncio.run(_run(shape, ledger, args.requests, concurrency)))
                        print(json.dumps({
                            "database": kind, "concurrency": concurrency, "shape": shape, "requests": len(times),
                            "mean_us": round(statistics.fmean(times) * 1e6),
                            "p50_us": round(times[len(times) // 2] * 1e6),
                            "p95_us": round(times[int(len(times) * 0.95)] * 1e6),
                        }))
                engine.dispose()
        finally:
            for _, _, schema in stores:
                if schema is not None:
                    with psycopg.connect(args.postgres, autocommit=True) as conn:
                        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()

"""The request path's cost around the model, before and after a change, measured in one run.

    .venv/bin/python bench/gateway_overhead.py --before 5486403 [--rounds 3] [--requests 200]

Checks the `--before` commit out into a temporary git worktree and serves it with the same
virtual environment (its `src/` first on PYTHONPATH), next to the working tree's code, one server
at a time, alternating rounds. Each server gets a fresh home, one project key and the bundled
model. Cases, each at concurrency 1 and 8:

- `models`: `GET /v1/models`: authentication, the registry, the envelope: the gateway alone.
- `chat-1`: a chat completion of one token: auth, limits, planning (template, tokenize), one
  decode step, settlement and the ledger row. The model's part is the same on both sides.
- `schema-1`: the same with a small `response_format` JSON schema (compile + grammar).

Prints a Markdown table: requests/s and latency p50/p95 per server and case, and after/before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from serverproc import MODEL, ServerProcess  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _body(case: str, i: int) -> dict[str, object] | None:
    if case == "models":
        return None
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Reply in json about person number {i}."}],
        "max_tokens": 1,
    }
    if case == "schema-1":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    return body


async def _load(base_url: str, key: str, case: str, concurrency: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    queue = iter(range(requests))
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:

        async def worker() -> None:
            nonlocal failures
            for i in queue:
                body = _body(case, i)
                started = time.perf_counter()
                if body is None:
                    reply = await client.get("/models")
                else:
                    reply = await client.post("/chat/completions", json=body)
                latencies.append(time.perf_counter() - started)
                failures += reply.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "rps": requests / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1000,
        "failed": failures,
    }


def _serve(src: Path, home: Path) -> tuple[ServerProcess, str]:
    env = {"PYTHONPATH": str(src), "MODELHOST_ACCESS_LOG": "false", "MODELHOST_SLOTS": "8"}
    proc = ServerProcess(home, env_overrides=env).start(timeout=120)
    key = proc.cli("keys", "create", "--name", "bench")
    return proc, str(key["secret"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the commit to compare the working tree against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    worktree = scratch / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before], check=True, capture_output=True)
    sides = {"before": worktree / "src", "after": ROOT / "src"}
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    try:
        for round_no in range(args.rounds):
            for side, src in (sides.items() if round_no % 2 == 0 else reversed(list(sides.items()))):
                proc, key = _serve(src, scratch / f"{side}-{round_no}")
                try:
                    for case in ("models", "chat-1", "schema-1"):
                        for concurrency in (1, 8):
                            asyncio.run(_load(proc.base_url, key, case, concurrency, 20))  # warm up
                            result = asyncio.run(_load(proc.base_url, key, case, concurrency, args.requests))
                            results.setdefault((side, case, concurrency), []).append(result)
                            print(json.dumps({"round": round_no, "side": side, "case": case, "concurrency": concurrency, **result}), file=sys.stderr)
                finally:
                    proc.stop()
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps([{"side": s, "case": c, "concurrency": n, "runs": r} for (s, c, n), r in results.items()], indent=1))
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{os.cpu_count()} cores, load average at the end {' '.join(loadavg)}, {args.rounds} rounds × {args.requests} requests")
    print("| case | conc. | before req/s | after req/s | after/before | before p50 / p95 ms | after p50 / p95 ms |")
    print("|---|---|---|---|---|---|---|")
    for case in ("models", "chat-1", "schema-1"):
        for concurrency in (1, 8):
            row = {}
            for side in sides:
                runs = results[(side, case, concurrency)]
                row[side] = (
                    statistics.median(r["rps"] for r in runs),
                    statistics.median(r["p50_ms"] for r in runs),
                    statistics.median(r["p95_ms"] for r in runs),
                    sum(r["failed"] for r in runs),
                )
            b, a = row["before"], row["after"]
            failed = f" (failed: {b[3]} / {a[3]})" if b[3] or a[3] else ""
            print(f"| {case}{failed} | {concurrency} | {b[0]:.1f} | {a[0]:.1f} | {a[0] / b[0]:.2f} | {b[1]:.1f} / {b[2]:.1f} | {a[1]:.1f} / {a[2]:.1f} |")


if __name__ == "__main__":
    main()

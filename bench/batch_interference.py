"""Batches beside interactive traffic, in one run, one server (issue #15).

    .venv/bin/python bench/batch_interference.py [--lines 2000] [--tokens 8] [--interactive 120] [--concurrency 4]

Starts one server (fresh home, one project key, the bundled model) and measures, in this order:

1. **Interactive alone**: `--interactive` streamed chat completions at concurrency `--concurrency`,
   TTFT (request sent → first content delta) of each; p50 and p95. Measured again after (2), and
   both runs together are the "alone" the ratio is taken against, so drift during the run shows.
2. **Interactive beside a batch**: a chat batch of `--lines` lines is created, and once it is
   `in_progress` the same interactive workload runs again; p50 and p95 TTFT. The target: p95
   within 1.5× of (1). The batch is cancelled afterwards.
3. **Batch throughput**: lines/min of a batch of `--throughput-lines` lines with nothing else
   running (created → completed, from the batch's own timestamps), against the same lines sent as
   interactive requests one after another (and at the batch's concurrency) by this client.

Prints Markdown tables and the ratios; every number comes from this run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from serverproc import MODEL, ServerProcess  # noqa: E402

QUESTIONS = ["Name a colour.", "Say hello.", "Name a fruit.", "Count to three.", "Name an animal."]


def _line_body(i: int, tokens: int) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}],
        "max_tokens": tokens,
        "temperature": 0,
    }


def _batch_file(lines: int, tokens: int) -> bytes:
    out = io.StringIO()
    for i in range(lines):
        record = {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": _line_body(i, tokens)}
        out.write(json.dumps(record) + "\n")
    return out.getvalue().encode()


def _ttft(http: httpx.Client, i: int, tokens: int) -> float:
    body = {**_line_body(i, tokens), "stream": True}
    sent = time.perf_counter()
    first: float | None = None
    with http.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():  # to the end: the request ends as a user's would
            if first is None and line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - sent
    if first is None:
        raise RuntimeError("no content in the stream")
    return first


def _interactive(http: httpx.Client, requests: int, concurrency: int, tokens: int) -> list[float]:
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: _ttft(http, i, tokens), range(requests)))


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def _create_batch(client: OpenAI, lines: int, tokens: int) -> str:
    upload = client.files.create(file=("bench.jsonl", _batch_file(lines, tokens)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    return batch.id


def _wait(client: OpenAI, batch_id: str, statuses: set[str], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} not in {statuses} after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--throughput-lines", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--interactive", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        server = ServerProcess(Path(home)).start(timeout=180)
        try:
            key = str(server.cli("keys", "create", "--name", "bench")["secret"])
            client = OpenAI(base_url=server.base_url, api_key=key, timeout=600, max_retries=0)
            http = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
            _interactive(http, 4, 2, args.tokens)  # warm the path

            alone = _interactive(http, args.interactive, args.concurrency, args.tokens)
            batch_id = _create_batch(client, args.lines, args.tokens)
            _wait(client, batch_id, {"in_progress"}, 300)
            time.sleep(2)  # let the batch fill the engine's slots
            beside = _interactive(http, args.interactive, args.concurrency, args.tokens)
            done = client.batches.retrieve(batch_id).request_counts
            client.batches.cancel(batch_id)
            _wait(client, batch_id, {"cancelled", "completed"}, 600)
            after = _interactive(http, args.interactive, args.concurrency, args.tokens)  # alone again: drift shows

            print(f"interactive: {args.interactive} streamed chat requests at c={args.concurrency}, {args.tokens} tokens\n")
            print("| case | TTFT p50 ms | TTFT p95 ms |\n|---|---|---|")
            print(f"| alone | {_p(alone, 0.5):.1f} | {_p(alone, 0.95):.1f} |")
            print(f"| beside a {args.lines}-line batch | {_p(beside, 0.5):.1f} | {_p(beside, 0.95):.1f} |")
            print(f"| alone again, after the batch is cancelled | {_p(after, 0.5):.1f} | {_p(after, 0.95):.1f} |")
            both = alone + after
            print(f"\np95 beside / alone (before and after together): {_p(beside, 0.95) / _p(both, 0.95):.2f}×, "
                  f"p50 {_p(beside, 0.5) / _p(both, 0.5):.2f}× (target: p95 ≤ 1.5×); "
                  f"batch lines finished meanwhile: {done.completed if done else '?'}\n")

            batch_id = _create_batch(client, args.throughput_lines, args.tokens)
            batch = _wait(client, batch_id, {"completed", "failed", "expired", "cancelled"}, 3600)
            minutes = (batch.completed_at - batch.in_progress_at) / 60  # type: ignore[attr-defined,operator]
            batch_rate = args.throughput_lines / minutes
            started = time.perf_counter()
            for i in range(args.throughput_lines):
                http.post("/chat/completions", json=_line_body(i, args.tokens)).raise_for_status()
            serial_rate = args.throughput_lines / ((time.perf_counter() - started) / 60)
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda i: http.post("/chat/completions", json=_line_body(i, args.tokens)).raise_for_status(),
                              range(args.throughput_lines)))
            parallel_rate = args.throughput_lines / ((time.perf_counter() - started) / 60)
            print(f"throughput: {args.throughput_lines} lines, {args.tokens} tokens each, machine otherwise idle\n")
            print("| how | lines/min |\n|---|---|")
            print(f"| batch ({batch.status}) | {batch_rate:.0f} |")  # type: ignore[attr-defined]
            print(f"| interactive, one at a time | {serial_rate:.0f} |")
            print(f"| interactive, c={args.concurrency} | {parallel_rate:.0f} |")
            print(f"\nbatch / interactive c={args.concurrency}: {batch_rate / parallel_rate:.2f}×")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

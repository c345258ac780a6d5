"""Load generator for OpenAI-compatible chat servers: N concurrent clients, fixed work per request.

    python bench/loadgen.py --base-url http://127.0.0.1:8000/v1 --key sk-… --concurrency 16 \
        --requests 32 --max-tokens 128 [--stream] [--shared-system-prompt] --out result.json

Every request asks for exactly `--max-tokens` tokens (the end-of-turn tokens are suppressed with
logit_bias), so servers are compared on equal work. Prints one JSON object: aggregate completion
tokens/s, requests/s, TTFT and latency percentiles, how many requests were incomplete, and the
server's peak RSS when `--pid` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

# SmolLM2's <|endoftext|> (0) and <|im_end|> (2): suppressed so every request runs to max_tokens.
NO_EOS = {"0": -100, "2": -100}
TOPICS = ["the sea", "a mountain", "old maps", "coffee", "trains", "winter", "a library", "bees", "clocks", "rivers",
          "lanterns", "gardens", "comets", "bridges", "violins", "deserts"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def system_prompt(tokens_hint: int) -> str:
    sentence = "You are a meticulous assistant who answers precisely, cites sources and keeps a calm tone. "
    return sentence * max(1, tokens_hint // 18)


async def one_request(client: httpx.AsyncClient, args: argparse.Namespace, i: int) -> dict[str, float | int | bool]:
    messages = [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}]
    if args.shared_system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt(400)})
    body = {"model": args.model, "messages": messages, "max_tokens": args.max_tokens, "temperature": 0.8,
            "seed": i, "logit_bias": NO_EOS}
    started = time.perf_counter()
    ttft = None
    tokens = 0
    content_chunks = 0
    if args.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        async with client.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        content_chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - started
        # A server that sends no usage in streams (llama-cpp-python's): one chunk per token.
        tokens = tokens or content_chunks
    else:
        response = await client.post("/chat/completions", json=body)
        response.raise_for_status()
        tokens = response.json()["usage"]["completion_tokens"]
    latency = time.perf_counter() - started
    return {"latency": latency, "ttft": ttft if ttft is not None else latency, "tokens": tokens,
            "complete": tokens == args.max_tokens}


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def main(args: argparse.Namespace) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=600, limits=limits) as client:
        await one_request(client, argparse.Namespace(**{**vars(args), "max_tokens": 4}), 999)  # warm-up
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.requests):
            queue.put_nowait(i)
        results: list[dict[str, float | int | bool]] = []
        errors: list[str] = []

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    results.append(await one_request(client, args, i))
                except Exception as exc:  # recorded: a failed request is a lost request
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    tokens = sum(int(r["tokens"]) for r in results)
    return {
        "concurrency": args.concurrency,
        "requests": args.requests,
        "stream": args.stream,
        "shared_system_prompt": args.shared_system_prompt,
        "max_tokens": args.max_tokens,
        "completed": len(results),
        "incomplete": sum(1 for r in results if not r["complete"]),
        "errors": errors[:5],
        "elapsed_s": round(elapsed, 2),
        "completion_tokens_per_s": round(tokens / elapsed, 1),
        "requests_per_s": round(len(results) / elapsed, 3),
        "ttft_p50_ms": round(1000 * percentile([float(r["ttft"]) for r in results], 0.5), 1),
        "ttft_p95_ms": round(1000 * percentile([float(r["ttft"]) for r in results], 0.95), 1),
        "latency_p50_ms": round(1000 * percentile([float(r["latency"]) for r in results], 0.5), 1),
        "latency_p95_ms": round(1000 * percentile([float(r["latency"]) for r in results], 0.95), 1),
        "mean_latency_s": round(statistics.mean(float(r["latency"]) for r in results), 2) if results else None,
        "peak_rss_mib": peak_rss_mib(args.pid) if args.pid else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--shared-system-prompt", action="store_true")
    parser.add_argument("--pid", type=int, default=0, help="server pid, for its peak RSS")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main(args))
    text = json.dumps(result)
    print(text)
    if args.out:
        with args.out.open("a") as fh:
            fh.write(text + "\n")

"""The Responses API against chat completions on the same workload, in one run, one server.

    .venv/bin/python bench/responses_vs_chat.py [--rounds 3] [--requests 8] [--tokens 32] [--chain 10]

Starts one server (fresh home, one project key, the bundled model) and measures, alternating the
two APIs round by round so drift hits both alike:

- streamed TTFT (request sent → first text delta) and output tokens/s after the first token, for
  `POST /v1/chat/completions` (stream) and `POST /v1/responses` (stream), same prompt, same
  `max_tokens`/`max_output_tokens`, temperature 0; the target is Responses within 5 % of chat.
- a `previous_response_id` chain of `--chain` turns (store: true, streamed): each turn's TTFT and
  input tokens. The chain re-reads the whole context each turn; with prefix reuse the TTFT stays
  flat instead of growing with the chain (compare `cached_tokens`).

Prints Markdown tables; numbers are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from serverproc import MODEL, ServerProcess  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper and a cat."


def _events(response: httpx.Response) -> list[tuple[float, dict[str, object]]]:
    """(arrival time, payload) of each SSE data line."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append((time.perf_counter(), json.loads(line[6:])))
    return out


def _chat(client: httpx.Client, tokens: int) -> tuple[float, float]:
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        events = _events(response)
    text = [t for t, e in events if e["choices"] and e["choices"][0]["delta"].get("content")]  # type: ignore[index]
    usage = events[-1][1]["usage"]
    return _rates(sent, text, int(usage["completion_tokens"]))  # type: ignore[index]


def _chat_turn(client: httpx.Client, messages: list[dict[str, str]]) -> tuple[float, str, dict[str, Any]]:
    """One streamed turn of a client-kept chat history: TTFT, the answer's text, the usage."""
    body = {
        "model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        events = _events(response)
    deltas = [(t, e["choices"][0]["delta"].get("content")) for t, e in events if e["choices"]]  # type: ignore[index]
    text = [(t, c) for t, c in deltas if c]
    return text[0][0] - sent, "".join(c for _, c in text), events[-1][1]["usage"]  # type: ignore[return-value]


def _responses(client: httpx.Client, tokens: int, previous: str | None = None, text_in: str = PROMPT) -> tuple[float, float, dict[str, object]]:
    body: dict[str, object] = {"model": MODEL, "input": text_in, "max_output_tokens": tokens, "temperature": 0, "stream": True}
    if previous is not None:
        body["previous_response_id"] = previous
    sent = time.perf_counter()
    with client.stream("POST", "/responses", json=body) as response:
        response.raise_for_status()
        events = _events(response)
    text = [t for t, e in events if e["type"] == "response.output_text.delta"]
    final = events[-1][1]["response"]
    assert isinstance(final, dict)
    usage = final["usage"]
    ttft, rate = _rates(sent, text, int(usage["output_tokens"]))
    return ttft, rate, final


def _rates(sent: float, text_times: list[float], tokens: int) -> tuple[float, float]:
    ttft = text_times[0] - sent
    rest = text_times[-1] - text_times[0]
    return ttft, (tokens - 1) / rest if rest > 0 and tokens > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--chain", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        server = ServerProcess(Path(home)).start(timeout=180)
        try:
            key = str(server.cli("keys", "create", "--name", "bench")["secret"])
            client = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
            _chat(client, 4), _responses(client, 4)  # warm both paths
            rows: dict[str, list[tuple[float, float]]] = {"chat.completions": [], "responses": []}
            for _ in range(args.rounds):
                for _ in range(args.requests):
                    rows["chat.completions"].append(_chat(client, args.tokens))
                    ttft, rate, _ = _responses(client, args.tokens)
                    rows["responses"].append((ttft, rate))
            print(f"{args.rounds} rounds × {args.requests} requests each, {args.tokens} tokens, streamed, temperature 0\n")
            print("| API | TTFT p50 ms | tok/s p50 |\n|---|---|---|")
            medians = {}
            for api, values in rows.items():
                ttft = statistics.median(v[0] for v in values) * 1000
                rate = statistics.median(v[1] for v in values)
                medians[api] = (ttft, rate)
                print(f"| {api} | {ttft:.1f} | {rate:.1f} |")
            (ct, cr), (rt, rr) = medians["chat.completions"], medians["responses"]
            print(f"\nresponses / chat: TTFT {rt / ct:.3f}×, tok/s {rr / cr:.3f}×\n")
            print("| turn | responses TTFT ms | input tokens | cached tokens | chat TTFT ms | chat prompt tokens | chat cached |")
            print("|---|---|---|---|---|---|---|")
            previous = None
            # Its own system message: the chat conversation shares no prefix with the responses chain
            # (the same organization's KV cache would otherwise hand it the tokens the chain just computed).
            history: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
            for turn in range(1, args.chain + 1):
                said = f"Turn {turn}: go on, one sentence."
                ttft, _, final = _responses(client, 8, previous, said)
                usage = final["usage"]
                assert isinstance(usage, dict)
                cached = usage["input_tokens_details"]["cached_tokens"]
                previous = str(final["id"])
                # The same conversation through chat completions, the client keeping the history: what
                # the engine alone costs as the context grows, to tell from what the stored chain adds.
                history.append({"role": "user", "content": said})
                chat_ttft, answer, chat_usage = _chat_turn(client, history)
                history.append({"role": "assistant", "content": answer})
                chat_cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                print(f"| {turn} | {ttft * 1000:.1f} | {usage['input_tokens']} | {cached} "
                      f"| {chat_ttft * 1000:.1f} | {chat_usage['prompt_tokens']} | {chat_cached} |")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

"""Turn bench/run.sh's JSON lines into the Markdown table kept in bench/README.md."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    notes = [r for r in rows if "loadavg" in r]
    results = [r for r in rows if "concurrency" in r]
    print("| server | variant | workload | conc. | completion tok/s | req/s | TTFT p50 / p95 ms | latency p50 / p95 ms | failed / short | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        workload = "shared 400-token system prompt, 16 tokens" if r["shared_system_prompt"] else f"{r['max_tokens']} tokens"
        workload += ", stream" if r["stream"] else ""
        rss = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "?"
        print(
            f"| {r['server']} | {r['variant']} | {workload} | {r['concurrency']} | {r['completion_tokens_per_s']} | "
            f"{r['requests_per_s']} | {r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f} | {r['latency_p50_ms']:.0f} / "
            f"{r['latency_p95_ms']:.0f} | {r['requests'] - r['completed']} / {r['incomplete']} of {r['requests']} | {rss} |"
        )
    print()
    for n in notes:
        print(f"- {n['server']} ({n['variant']}): started {n['date']}, load average before the run {n['loadavg']}, {n['host']}")


if __name__ == "__main__":
    main(sys.argv[1])

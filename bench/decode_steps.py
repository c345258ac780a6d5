"""The decode ceiling: how fast llama.cpp itself steps N sequences at once, without the server.

Opens the bundled GGUF through modelhost's own context wrapper, prefills N short prompts (one
sequence each), then runs STEPS decode steps of one greedy token per sequence and reports
completion tokens per second. Each context variant (KV layout, flash attention, slot context) runs
in its own process, one after the other, so they never share the 2 cores.

    .venv/bin/python bench/decode_steps.py --sequences 16 --steps 128
    .venv/bin/python bench/decode_steps.py --sequences 16 --steps 128 --row-order shuffled
    .venv/bin/python bench/decode_steps.py --sequences 16 --model /tmp/smollm2-q8_0.gguf   # see requantize.py

`--row-order shuffled` adds each step's rows in a fixed random order of the sequences instead of
sequence order (what a server does if it batches sequences in admission order after slots have
been reused).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "per-slot KV, flash attention": {"kv_unified": False, "flash_attention": True},
    "per-slot KV, no flash attention": {"kv_unified": False, "flash_attention": False},
    "shared KV, flash attention": {"kv_unified": True, "flash_attention": True},
    "shared KV, no flash attention": {"kv_unified": True, "flash_attention": False},
}


def measure(
    sequences: int, steps: int, seq_context: int, threads: int, row_order: str, kv_unified: bool, flash_attention: bool,
    model_path: str | None = None,
) -> float:
    import numpy as np

    from modelhost.engine.llama_model import ContextOptions, LlamaModel, bundled_model_path

    model = LlamaModel(Path(model_path) if model_path else bundled_model_path())
    options = ContextOptions(
        n_seq=sequences, seq_context=seq_context, batch_tokens=512, threads=threads,
        flash_attention=flash_attention, kv_unified=kv_unified,
    )
    ctx = model.new_context(options)
    prompts = [model.tokenize(f"<|im_start|>user\nTell me story number {i}.<|im_end|>\n<|im_start|>assistant\n") for i in range(sequences)]
    rows: dict[int, int] = {}
    ctx.clear_batch()
    for seq, prompt in enumerate(prompts):
        for pos, token in enumerate(prompt):
            row = ctx.add(token, pos, seq, pos == len(prompt) - 1)
        rows[seq] = row
    assert ctx.decode() == 0
    positions = [len(p) for p in prompts]
    banned = [t for t in range(model.n_vocab) if model.is_end_of_generation(t)]
    order = list(range(sequences))
    if row_order == "shuffled":
        np.random.default_rng(0).shuffle(order)
    started = time.perf_counter()
    for _ in range(steps):
        tokens = {}
        for seq, row in rows.items():
            logits = ctx.logits(row).copy()
            logits[banned] = -np.inf
            tokens[seq] = int(np.argmax(logits))
        ctx.clear_batch()
        for seq in order:
            rows[seq] = ctx.add(tokens[seq], positions[seq], seq, True)
            positions[seq] += 1
        assert ctx.decode() == 0
    elapsed = time.perf_counter() - started
    ctx.close()
    model.close()
    return sequences * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--seq-context", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--row-order", choices=["sequence", "shuffled"], default="sequence")
    parser.add_argument("--model", help="a GGUF file instead of the bundled model")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="measure one variant in this process")
    args = parser.parse_args()
    if args.variant:
        rate = measure(args.sequences, args.steps, args.seq_context, args.threads, args.row_order, **VARIANTS[args.variant],
                       model_path=args.model)
        print(json.dumps({"variant": args.variant, "row_order": args.row_order, "sequences": args.sequences, "steps": args.steps,
                          "seq_context": args.seq_context, "model": args.model or "bundled", "tokens_per_second": round(rate, 1)}))
        return
    for variant in VARIANTS:
        subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--sequences", str(args.sequences), "--steps",
             str(args.steps), "--seq-context", str(args.seq_context), "--threads", str(args.threads),
             "--row-order", args.row_order, *(["--model", args.model] if args.model else [])],
            check=True,
        )


if __name__ == "__main__":
    main()

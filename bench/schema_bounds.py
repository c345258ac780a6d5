"""What JSON-schema bounds cost (issue #12 item 1): refusal time per costly class, compile time and
worker memory for the worst shapes within the bounds, and the round trip a compile adds.

    .venv/bin/python bench/schema_bounds.py [--repeat 20]

Targets: a schema outside the bounds is refused in <= 50 ms; one within compiles in <= 1 s and
<= 64 MB. Also: what each accepted grammar costs the decode thread per token (llama.cpp's grammar
sampler on the bundled model's vocabulary, 40 steps with random scores, so the walk goes wherever
the grammar allows and often checks the whole vocabulary: the worst case, not the usual one). The peer measured in the same run is the converter called in-process with no bounds and
no worker (what the server did before), for the shapes it can survive.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "security"))

from schema_shapes import HOSTILE, WITHIN  # noqa: E402

import numpy as np  # noqa: E402

from modelhost.engine.grammar import GrammarConstraint, compile_schema  # noqa: E402
from modelhost.engine.grammar_compiler import GrammarCompiler, _converter_path  # noqa: E402
from modelhost.engine.llama_model import LlamaModel, bundled_model_path  # noqa: E402
from modelhost.engine.schema_bounds import GrammarError, check_schema  # noqa: E402
from modelhost.engine.schema_refs import inline_root_ref, with_hoisted_refs  # noqa: E402


def _in_process_converter():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_llama_grammar", _converter_path())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.json_schema_to_gbnf


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    convert = _in_process_converter()

    print("| costly class | refused in (median / max ms) |")
    print("|---|---|")
    for name, (schema, _) in sorted(HOSTILE.items()):
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            try:
                check_schema(schema)
            except GrammarError:
                pass
            times.append((time.perf_counter() - started) * 1000)
        print(f"| {name} | {statistics.median(times):.2f} / {max(times):.2f} |")

    print()
    print("| shape within the bounds | grammar KiB | worker compile (median / max ms) | worker peak RSS MiB | in-process, unbounded (median ms) | per token (median / max ms) |")
    print("|---|---|---|---|---|---|")
    model = LlamaModel(bundled_model_path())
    for name, schema in sorted(WITHIN.items()):
        compiler = GrammarCompiler(workers=1)
        try:
            compiler.compile({"type": "string"})
            pid = compiler._idle[0].proc.pid
            times, grammar = [], ""
            for _ in range(args.repeat):
                started = time.perf_counter()
                grammar = compiler.compile(schema)
                times.append((time.perf_counter() - started) * 1000)
            peak = _peak_mib(pid)
        finally:
            compiler.close()
        direct = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            convert(json.dumps(inline_root_ref(with_hoisted_refs(json.dumps(schema)))), None)
            direct.append((time.perf_counter() - started) * 1000)
        steps = _token_steps(model, compile_schema(schema))
        print(
            f"| {name} | {len(grammar) / 1024:.0f} | {statistics.median(times):.1f} / {max(times):.1f} | {peak:.1f} "
            f"| {statistics.median(direct):.1f} | {statistics.median(steps):.1f} / {max(steps):.1f} |"
        )


def _token_steps(model: LlamaModel, grammar: str) -> list[float]:
    constraint = GrammarConstraint(model.vocab, grammar)
    random = np.random.default_rng(7)
    steps = []
    try:
        for _ in range(40):
            scores = random.random(model.n_vocab, dtype=np.float32)
            started = time.perf_counter()
            constraint.mask(scores)
            if not np.isfinite(scores).any():
                break
            constraint.accept(int(np.argmax(scores)))
            steps.append((time.perf_counter() - started) * 1000)
    finally:
        constraint.close()
    return steps or [0.0]


if __name__ == "__main__":
    main()

"""The process that compiles JSON schemas to GBNF, one request at a time (see grammar_compiler.py).

Run as a script, not imported: it must not load llama.cpp, FastAPI or anything of the server,
so it starts in tens of milliseconds and its memory cap covers only the compilation. It reads
llama-cpp-python's converter (`llama_cpp/llama_grammar.py`, plain Python) from the path it is given.

Protocol, over stdin/stdout: one JSON line in `{"schema": …, "prop_order": [...] | null}`, one
JSON line out, `{"grammar": "…"}` or `{"error": "…"}`. A compile that runs out of memory answers
`{"error": …, "fatal": true}` and exits, so the next request gets a fresh process.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys


def _load_converter(path: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("modelhost_llama_grammar", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the schema converter from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.json_schema_to_gbnf


def main() -> None:
    converter_path, memory_bytes = sys.argv[1], int(sys.argv[2])
    convert = _load_converter(converter_path)
    # Cap the address space at what the process has now plus the budget: a schema that slipped
    # past the bounds fails with MemoryError here instead of growing until the OOM killer picks.
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[0]) * resource.getpagesize()
    limit = current + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.setrecursionlimit(4000)  # the converter recurses once per repetition of an array item
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    out = sys.stdout
    for line in sys.stdin:
        try:
            request = json.loads(line)
            # The parent kills a compile at its deadline; if the parent itself is gone (kill -9, the
            # shutdown deadline's exit), the CPU limit still ends a runaway here (SIGXCPU), and an idle
            # worker ends when its stdin closes. (Not PR_SET_PDEATHSIG: Linux sends that when the
            # *thread* that started the worker exits, and the server's pool threads come and go.)
            used = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime
            budget = int(used + float(request.get("cpu_seconds", 5)) + 2)
            resource.setrlimit(resource.RLIMIT_CPU, (budget, cpu_hard))  # soft only: it may rise again next time
            grammar = convert(json.dumps(request["schema"]), request.get("prop_order"))
            answer = {"grammar": grammar}
        except MemoryError:
            out.write(json.dumps({"error": "compiling the schema needs too much memory", "fatal": True}) + "\n")
            out.flush()
            raise SystemExit(3) from None
        except RecursionError:
            answer = {"error": "the schema nests or repeats too deeply to compile"}
        except Exception as exc:  # noqa: BLE001 - every converter failure is the schema's fault
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

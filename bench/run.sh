#!/usr/bin/env bash
# Benchmark modelhost against llama-cpp-python's own server and llama.cpp's own llama-server on the
# same GGUF, one server at a time.
#   bench/run.sh [OUT.jsonl]        then: .venv/bin/python bench/report.py OUT.jsonl
# A second busy process on 2 cores slows llama.cpp 10-30x: run this on an otherwise idle machine
# (the load average is recorded with every case).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results-$(date -u +%Y%m%dT%H%M).jsonl}
py=.venv/bin/python
peer=bench/.venv-peer
model_path=$($py -c 'from modelhost.engine.llama_model import bundled_model_path; print(bundled_model_path())')
requests_for() { if [ "$1" -ge 16 ]; then echo 32; elif [ "$1" -ge 4 ]; then echo 12; else echo 6; fi; }

if [ ! -x "$peer/bin/python" ]; then
  python3 -m venv "$peer"
  "$peer/bin/pip" install -q --upgrade pip
  "$peer/bin/pip" install -q "$(scripts/build-llama-wheel.sh "$peer/bin/python")"   # same build, same flags
  "$peer/bin/pip" install -q sse-starlette starlette-context pydantic-settings fastapi uvicorn pyyaml
fi

# The second peer: llama.cpp's own C++ server, built from the same llama.cpp (built before any
# measurement, so the build never shares the cores with a run).
llama_server=$(bench/build-llama-server.sh "$py")

wait_up() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.5; done; echo "server did not start" >&2; return 1; }
note() { printf '{"server": "%s", "variant": "%s", "loadavg": "%s", "date": "%s", "host": "%s"}\n' "$1" "$2" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(date -u +%FT%TZ)" "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)" >> "$out"; }

run_cases() {  # $1 name, $2 variant, $3 base url, $4 key, $5 pid, $6 which cases
  for stream in "" "--stream"; do
    for c in 1 4 16; do
      [ "$6" = "c16" ] && [ "$c" != 16 ] && continue
      $py bench/loadgen.py --base-url "$3" --key "$4" --concurrency "$c" --requests "$(requests_for "$c")" \
        --max-tokens 128 $stream --pid "$5" --out "$out.tmp" >/dev/null
      $py -c "import json,sys; r=json.loads(open('$out.tmp').read().splitlines()[-1]); r.update(server='$1', variant='$2'); print(json.dumps(r))" >> "$out"
    done
  done
  $py bench/loadgen.py --base-url "$3" --key "$4" --concurrency 4 --requests 16 --max-tokens 16 --stream \
    --shared-system-prompt --pid "$5" --out "$out.tmp" >/dev/null
  $py -c "import json; r=json.loads(open('$out.tmp').read().splitlines()[-1]); r.update(server='$1', variant='$2'); print(json.dumps(r))" >> "$out"
}

start_modelhost() {  # extra env in "$@"
  home=$(mktemp -d)
  env MODELHOST_HOME="$home" MODELHOST_SLOTS=16 MODELHOST_THREADS=2 "$@" .venv/bin/modelhost serve --port 8390 >"$home/log" 2>&1 &
  mh_pid=$!
  wait_up http://127.0.0.1:8390/health
  mh_key=$(MODELHOST_HOME="$home" .venv/bin/modelhost keys create --json | $py -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
}

for variant in "per-slot KV, prefix reuse" "shared KV" "prefix reuse off"; do
  case "$variant" in
    "per-slot KV, prefix reuse") start_modelhost; cases=all ;;
    "shared KV") start_modelhost MODELHOST_KV_UNIFIED=true; cases=c16 ;;
    "prefix reuse off") start_modelhost MODELHOST_PREFIX_REUSE=false; cases=shared ;;
  esac
  note modelhost "$variant"
  if [ "$cases" = shared ]; then
    $py bench/loadgen.py --base-url http://127.0.0.1:8390/v1 --key "$mh_key" --concurrency 4 --requests 16 --max-tokens 16 \
      --stream --shared-system-prompt --pid "$mh_pid" --out "$out.tmp" >/dev/null
    $py -c "import json; r=json.loads(open('$out.tmp').read().splitlines()[-1]); r.update(server='modelhost', variant='$variant'); print(json.dumps(r))" >> "$out"
  else
    run_cases modelhost "$variant" http://127.0.0.1:8390/v1 "$mh_key" "$mh_pid" "$cases"
  fi
  kill "$mh_pid"; wait "$mh_pid" 2>/dev/null || true
done

"$peer/bin/python" -m llama_cpp.server --model "$model_path" --model_alias smollm2-135m-instruct \
  --n_ctx 2048 --n_threads 2 --host 127.0.0.1 --port 8391 >/tmp/peer-server.log 2>&1 &
peer_pid=$!
wait_up http://127.0.0.1:8391/v1/models
note llama-cpp-python "server 0.3.36"
run_cases llama-cpp-python "server 0.3.36" http://127.0.0.1:8391/v1 "" "$peer_pid" all
kill "$peer_pid"; wait "$peer_pid" 2>/dev/null || true
# Same shape as modelhost's default: 16 slots of 2 048 tokens, a KV stream per slot, flash attention.
"$llama_server" --model "$model_path" --alias smollm2-135m-instruct --ctx-size $((16 * 2048)) --parallel 16 \
  --no-kv-unified --flash-attn on --threads 2 --threads-batch 2 --host 127.0.0.1 --port 8392 >/tmp/llama-server.log 2>&1 &
ls_pid=$!
wait_up http://127.0.0.1:8392/health
note llama.cpp "llama-server, same build"
run_cases llama.cpp "llama-server, same build" http://127.0.0.1:8392/v1 "" "$ls_pid" all
kill "$ls_pid"; wait "$ls_pid" 2>/dev/null || true
rm -f "$out.tmp"
echo "results in $out" >&2

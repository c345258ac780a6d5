#!/usr/bin/env bash
# Build llama-cpp-python once per (version, CMake flags, Python) and keep the wheel outside the
# checkout, so a fresh clone or a CI run installs it in seconds instead of compiling for minutes.
#
# Why not let pip do it: PyPI only has the sdist, its default native build selects ggml's AMX
# path, which segfaults in the first llama_decode on these CPUs; and pip's own wheel cache keys
# on the sdist alone, so it would silently hand back a build made with other flags.
# Prints the path of the wheel on stdout.
set -euo pipefail

python=${1:?usage: build-llama-wheel.sh PYTHON}
# shellcheck source=scripts/llama-build.sh
. "$(dirname "$0")/llama-build.sh"  # sets $version and $flags
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$(printf '%s|%s|%s|%s' "$version" "$flags" "$pyver" "$(uname -m)" | sha256sum | cut -c1-16)
cache_root=${MODELHOST_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelhost/wheels}
dir="$cache_root/llama-cpp-python-$version-$key"

wheel=$(ls "$dir"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $version (one time, a few minutes) with: $flags" >&2
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" FORCE_CMAKE=1 \
    "$python" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$version" -w "$tmp" >&2
  rm -rf "$dir"; mv "$tmp" "$dir"
  wheel=$(ls "$dir"/llama_cpp_python-*.whl | head -n1)
fi
echo "$wheel"

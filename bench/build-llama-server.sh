#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (`llama-server`, continuous batching in C++) from the llama.cpp
# that llama-cpp-python's PyPI sdist vendors: the same llama.cpp version and CMake flags as
# modelhost's engine, so bench/run.sh compares servers, not builds. Only the registry is needed
# (the sdist comes from PyPI); the web UI is left out (it would be fetched from a hub).
# Built once per (version, flags), kept outside the checkout; prints the binary's path on stdout.
#   bench/build-llama-server.sh PYTHON
set -euo pipefail

python=${1:?usage: build-llama-server.sh PYTHON}
# shellcheck source=scripts/llama-build.sh
. "$(dirname "$0")/../scripts/llama-build.sh"  # sets $version and $flags, as for the engine's wheel
key=$(printf '%s|%s|%s' "$version" "$flags" "$(uname -m)" | sha256sum | cut -c1-16)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/modelhost/llama-server-$version-$key"

if [ ! -x "$dir/llama-server" ]; then
  echo "building llama-server from llama-cpp-python $version's llama.cpp (one time, several minutes) with: $flags" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp" >&2
  tar xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp"
  # shellcheck disable=SC2086  # $flags is a list of CMake arguments
  cmake -S "$tmp/llama_cpp_python-$version/vendor/llama.cpp" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release $flags \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >&2
  cmake --build "$tmp/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$dir.tmp"
  cp "$tmp/build/bin/llama-server" "$dir.tmp/"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
fi
echo "$dir/llama-server"

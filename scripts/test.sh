#!/usr/bin/env bash
# Install everything (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# Other SDKs the client tests drive (openai 0.28 for Python, openai@3 and current for Node),
# cached outside the checkout; a failure here shows up again, readably, in the test itself.
.venv/bin/python tests/clients/runner.py install >/dev/null || echo "warning: could not pre-install the client SDKs" >&2
# llama-cpp-python's own server, an upstream for tests/api/test_upstream_proxy.py (cached venv, same wheel).
.venv/bin/python tests/support/peer_server.py install >/dev/null || echo "warning: could not pre-install llama-cpp-python's server" >&2
# Lint first: a syntax slip or an undefined name fails in a second, not after the model tests.
.venv/bin/ruff check --quiet src tests bench
# Then types: the files and the per-package strictness are in pyproject.toml's [tool.mypy].
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Replace the pinned OpenAI OpenAPI spec (spec/openai-openapi/) with the one at an upstream commit.
#   scripts/refresh-openai-spec.sh COMMIT
# Needs access to raw.githubusercontent.com. Updates openapi.yaml and LICENSE, and the commit and
# sha256 in README.md; then run the tests and read the diff before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=${1:?usage: scripts/refresh-openai-spec.sh COMMIT}
dir=spec/openai-openapi
base="https://raw.githubusercontent.com/openai/openai-openapi/$commit"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL "$base/openapi.yaml" -o "$tmp/openapi.yaml"
curl -fsSL "$base/LICENSE" -o "$tmp/LICENSE"
old_commit=$(grep -o '[0-9a-f]\{40\}' "$dir/README.md" | head -1)
old_sha=$(grep -o '[0-9a-f]\{64\}' "$dir/README.md" | head -1)
new_sha=$(sha256sum "$tmp/openapi.yaml" | cut -d' ' -f1)
mv "$tmp/openapi.yaml" "$tmp/LICENSE" "$dir/"
sed -i "s/$old_commit/$commit/; s/$old_sha/$new_sha/" "$dir/README.md"
echo "spec at $commit (sha256 $new_sha); update the commit title, date and size in $dir/README.md by hand" >&2

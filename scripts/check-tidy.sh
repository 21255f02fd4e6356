#!/usr/bin/env bash
# Fails when go.mod or go.sum differ from what `go mod tidy` makes of them.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp go.mod go.sum "$tmp/"
restore() { cp "$tmp/go.mod" "$tmp/go.sum" .; }
if ! go mod tidy >"$tmp/log" 2>&1; then
  restore; echo "go mod tidy failed:"; cat "$tmp/log"; exit 1
fi
if ! diff -u "$tmp/go.mod" go.mod || ! diff -u "$tmp/go.sum" go.sum; then
  restore; echo "go.mod/go.sum are not tidy: run go mod tidy and commit"; exit 1
fi
echo "go.mod: tidy"

#!/usr/bin/env bash
# Fails when the checked-in Go code of proto/ differs from what `make proto`
# generates, or when it cannot generate at all: a check that cannot run is a
# failure, never a pass. It generates into a temporary directory, so the
# tree is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v buf >/dev/null || { echo "proto drift: buf is not installed (make setup)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! buf generate -o "$tmp" >"$tmp/buf.log" 2>&1; then
  echo "proto drift: buf generate failed:"; cat "$tmp/buf.log"; exit 1
fi
n=$(find "$tmp/proto" -name '*.pb.go' | wc -l)
if [ "$n" -eq 0 ]; then
  echo "proto drift: buf generated no Go files"; exit 1
fi
fail=0
while read -r f; do
  rel=${f#"$tmp/"}
  if [ ! -f "$rel" ]; then echo "proto drift: $rel is not checked in"; fail=1
  elif ! diff -u "$rel" "$f" >"$tmp/diff"; then echo "proto drift: $rel differs from the generated code:"; head -20 "$tmp/diff"; fail=1
  fi
done < <(find "$tmp/proto" -name '*.pb.go')
while read -r f; do
  [ -f "$tmp/$f" ] || { echo "proto drift: $f is checked in but no longer generated"; fail=1; }
done < <(git ls-files 'proto/*.pb.go')
if [ "$fail" -ne 0 ]; then echo "generated code is out of date: run make proto and commit"; exit 1; fi
echo "proto: $n generated files match"

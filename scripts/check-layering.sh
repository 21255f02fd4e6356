#!/usr/bin/env bash
# Fails when a package imports what docs/DESIGN.md's rooms forbid:
# containerd's client is imported only under pool/containerd (no
# exemption), nothing but pool/containerd's own tree and cmd/ imports
# pool/containerd, api/ never imports pool/ nor the executor protocol, and the leaf rooms (executor,
# datastore, proto) import none of agent, pool or api; errdefs and api/wire
# are leaves.
set -euo pipefail
mod=github.com/kilnfx/kiln
fail=0
n=0
while read -r pkg imports; do
  n=$((n + 1))
  case "$pkg" in
    $mod/pool/containerd|$mod/pool/containerd/*) ;;
    *)
      if grep -qE '(^| )github.com/containerd/containerd(/| |$)' <<<" $imports "; then
        echo "layering: $pkg imports containerd"; fail=1
      fi ;;
  esac
  case "$pkg" in
    $mod/pool/containerd|$mod/pool/containerd/*|$mod/cmd/*|$mod/bench|$mod/bench/*) ;;
    *)
      if grep -qE "(^| )$mod/pool/containerd(/| |$)" <<<" $imports "; then
        echo "layering: $pkg imports pool/containerd (wire the driver in cmd/)"; fail=1
      fi ;;
  esac
  case "$pkg" in
    $mod/api|$mod/api/*)
      if grep -qE "(^| )$mod/pool(/| |$)" <<<" $imports "; then
        echo "layering: $pkg imports pool"; fail=1
      fi
      if grep -qE "(^| )$mod/proto/executorpb( |$)" <<<" $imports "; then
        echo "layering: $pkg imports the executor protocol (use agent.Header)"; fail=1
      fi ;;
  esac
  case "$pkg" in
    $mod/executor|$mod/executor/*|$mod/datastore|$mod/datastore/*|$mod/proto/*)
      if grep -qE "(^| )$mod/(agent|pool|api)(/| |$)" <<<" $imports "; then
        echo "layering: $pkg imports agent, pool or api"; fail=1
      fi ;;
  esac
  case "$pkg" in
    $mod/api/wire|$mod/errdefs)
      if grep -qE "(^| )$mod/" <<<" ${imports//$mod\/api\/wire/} "; then
        echo "layering: $pkg is a leaf and imports kiln packages other than api/wire"; fail=1
      fi ;;
  esac
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
if [ "$n" -eq 0 ]; then echo "layering: go list found no packages"; exit 1; fi
[ "$fail" -eq 0 ] && echo "layering: $n packages checked"
exit $fail

#!/usr/bin/env bash
# Fails when a package imports what DESIGN.md's rooms forbid:
# only pool/containerd and agent may import containerd, and api/ never
# imports pool/.
set -euo pipefail
mod=github.com/kilnfx/kiln
fail=0
while read -r pkg imports; do
  case "$pkg" in
    $mod/pool/containerd|$mod/pool/containerd/*|$mod/agent|$mod/agent/*|$mod/cmd/*) ;;
    *)
      if grep -qE '(^| )github.com/containerd/containerd(/| |$)' <<<" $imports "; then
        echo "layering: $pkg imports containerd"; fail=1
      fi ;;
  esac
  case "$pkg" in
    $mod/api|$mod/api/*)
      if grep -qE "(^| )$mod/pool(/| |$)" <<<" $imports "; then
        echo "layering: $pkg imports pool"; fail=1
      fi ;;
  esac
  case "$pkg" in
    $mod/executor|$mod/executor/*|$mod/datastore|$mod/datastore/*|$mod/proto/*)
      if grep -qE "(^| )$mod/(agent|pool|api)(/| |$)" <<<" $imports "; then
        echo "layering: $pkg imports agent, pool or api"; fail=1
      fi ;;
  esac
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
exit $fail

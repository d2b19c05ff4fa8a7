#!/usr/bin/env bash
# Renders both overlays to target/k8s/dev.yaml and target/k8s/production.yaml.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/k8s/tools.sh
mkdir -p target/k8s
for overlay in dev production; do
  target/k8s-tools/venv/bin/kubectl kustomize "deploy/k8s/overlays/$overlay" >"target/k8s/$overlay.yaml"
  echo "target/k8s/$overlay.yaml: $(grep -c '^kind:' "target/k8s/$overlay.yaml") objects"
done

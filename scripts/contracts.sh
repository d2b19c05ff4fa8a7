#!/usr/bin/env bash
# The event and gRPC contracts as a product (docs/contracts.md).
#
#   scripts/contracts.sh check          # make contracts: the AsyncAPI document is valid,
#                                       # buf breaking against the released image, and the
#                                       # code-vs-document test (testkit/tests/contracts.rs)
#   scripts/contracts.sh release [REF]  # make contracts-release: rebuild proto/released.binpb
#                                       # from the protos at REF (default HEAD)
#
# Its tools come from npm, pinned, installed once into target/contracts-tools
# (as deploy/k8s/tools.sh does for its own): the AsyncAPI parser and buf.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=target/contracts-tools
NPM_PACKAGES=(@asyncapi/parser@3.6.6 @bufbuild/buf@1.75.0)
IMAGE=proto/released.binpb
BUF="$TOOLS/node/node_modules/.bin/buf"

install_tools() {
  if [ "$(cat "$TOOLS/node/.installed" 2>/dev/null)" != "${NPM_PACKAGES[*]}" ]; then
    mkdir -p "$TOOLS/node"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" "${NPM_PACKAGES[@]}"
    echo "${NPM_PACKAGES[*]}" >"$TOOLS/node/.installed"
  fi
}

case "${1:-check}" in
  check)
    install_tools
    echo "--- AsyncAPI document"
    NODE_PATH="$TOOLS/node/node_modules" node scripts/validate-asyncapi.cjs docs/asyncapi.yaml
    echo "--- buf breaking against $IMAGE"
    "$BUF" breaking --against "$IMAGE"
    echo "buf breaking: no breaking change against $IMAGE"
    echo "--- code vs document"
    cargo test -p testkit --test contracts
    ;;
  release)
    install_tools
    ref="${2:-HEAD}"
    tree=$(mktemp -d)
    trap 'rm -rf "$tree"' EXIT
    # The protos as committed at $ref, whatever the work tree holds.
    git archive "$ref" buf.yaml proto | tar -x -C "$tree"
    "$BUF" build "$tree" --exclude-source-info -o "$IMAGE"
    echo "$IMAGE: the contracts of $(git rev-parse --short "$ref")"
    ;;
  *)
    echo "usage: $0 [check | release [REF]]" >&2
    exit 2
    ;;
esac

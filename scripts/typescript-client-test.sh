#!/usr/bin/env bash
# Part of `make test`: starts the services natively on ports of their own
# (50251-50254, database dbps_tsclient, AMQP prefix tsclient), regenerates the
# TypeScript types from proto/, typechecks and builds the TypeScript client
# (`tsc`, strict; a type error fails the run), runs its end-to-end script
# against them, and stops exactly those processes.
set -euo pipefail
cd "$(dirname "$0")/.."

client=clients/typescript
if [ ! -f "$client/node_modules/.installed" ]; then
  echo "typescript-client-test.sh: $client/node_modules is missing; run: make $client/node_modules/.installed" >&2
  exit 1
fi

run_dir=target/tsclient-run
trap 'scripts/stack.sh stop "$run_dir" >/dev/null' EXIT
scripts/stack.sh start "$run_dir" 50250 dbps_tsclient tsclient >/dev/null
(
  cd "$client"
  ./generate.sh >/dev/null
  npm run --silent typecheck
  npm run --silent build
)
node "$client/dist/src/place_order.js" \
  --order-addr localhost:50251 --customer-addr localhost:50252 --inventory-addr localhost:50253

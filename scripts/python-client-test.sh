#!/usr/bin/env bash
# Part of `make test`: starts the services natively on ports of their own
# (50151-50154, database dbps_pyclient, AMQP prefix pyclient), regenerates the
# Python stubs from proto/, runs the Python client's end-to-end script against
# them, and stops exactly those processes.
set -euo pipefail
cd "$(dirname "$0")/.."

run_dir=target/pyclient-run
trap 'scripts/stack.sh stop "$run_dir" >/dev/null' EXIT
scripts/stack.sh start "$run_dir" 50150 dbps_pyclient pyclient >/dev/null
clients/python/generate.sh >/dev/null
clients/python/.venv/bin/python clients/python/place_order.py \
  --order-addr localhost:50151 --customer-addr localhost:50152 --inventory-addr localhost:50153

#!/usr/bin/env bash
# `make down`: stops what `make up` started, and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

case $(cat .run/mode 2>/dev/null || echo none) in
  compose) docker compose --profile observability down ;;
  native) scripts/stack.sh stop .run ;;
  *) echo "nothing was started by make up" ;;
esac
rm -f .run/mode

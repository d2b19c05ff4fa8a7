#!/usr/bin/env bash
# Makes sure the local PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672)
# answer, starting them with the machine's own commands if they are down.
set -euo pipefail

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() { # port name seconds
  local deadline=$((SECONDS + $3))
  until port_open "$1"; do
    if ((SECONDS > deadline)); then
      echo "$2 did not come up on port $1 within $3 s" >&2
      return 1
    fi
    sleep 0.5
  done
}

if ! port_open 5432; then
  echo "PostgreSQL is down; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_port 5432 PostgreSQL 60
fi

if ! port_open 5672; then
  echo "RabbitMQ is down; starting it"
  rabbitmq-server -detached
  wait_port 5672 RabbitMQ 120
fi

#!/usr/bin/env bash
# `make up`: the whole system, with Docker Compose where a Docker engine
# answers, otherwise as native processes against the local Postgres and
# RabbitMQ. Returns once every service reports SERVING.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run

if docker info >/dev/null 2>&1; then
  echo "Docker engine found: docker compose up"
  docker compose up --build --detach --wait
  echo compose >.run/mode
else
  echo "No Docker engine: running the services natively against local Postgres and RabbitMQ"
  scripts/ensure-infra.sh
  echo native >.run/mode
  scripts/stack.sh start .run 50050 dbps dbps
fi

cat <<'MSG'

The system is up (gRPC, plaintext, reflection on):
  order-service      localhost:50051   order.v1.OrderService
  customer-service   localhost:50052   customer.v1.CustomerService
  inventory-service  localhost:50053   inventory.v1.InventoryService
  reporting-service  localhost:50054   reporting.v1.ReportingService
Metrics: http://localhost:9091/metrics (order), :9092 customer, :9093 inventory, :9094 reporting
Try:  grpcurl -plaintext localhost:50051 list
Walkthrough: README.md ("Try it"), or `make demo`. Stop with `make down`.
MSG

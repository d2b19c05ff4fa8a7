#!/usr/bin/env bash
# Runs the services as native processes against the local Postgres and RabbitMQ.
#
#   scripts/stack.sh start RUN_DIR PORT_BASE DATABASE PREFIX
#   scripts/stack.sh stop  RUN_DIR
#
# start: builds the binaries (PROFILE=dev|release, default dev), starts each
# service with its own role on DATABASE, gRPC on PORT_BASE+1 (order), +2
# (customer), +3 (inventory), +4 (reporting), exchanges and queues under
# PREFIX; records each PID and log in RUN_DIR; returns once every service
# reports SERVING.
# stop: stops exactly the processes recorded in RUN_DIR (SIGTERM, then SIGKILL
# after 15 s) and removes their records.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES=(customer inventory order reporting)
PROFILE=${PROFILE:-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN_DIR=$TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
ADMIN_DATABASE_URL=${ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_HOST=${PG_HOST:-127.0.0.1:5432}

# /metrics: 9091.. for PORT_BASE 50050 (make up), 9191.. for 50150.
metrics_port_of() {
  echo $(($(port_of "$1" "$2") - 50050 + 9090))
}

port_of() {
  case $1 in
    order) echo $(($2 + 1)) ;; customer) echo $(($2 + 2)) ;;
    inventory) echo $(($2 + 3)) ;; reporting) echo $(($2 + 4)) ;;
  esac
}

# True if RUN_DIR/NAME.pid names a live process running our binary.
alive() {
  local pidfile=$1/$2.pid pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2-service"
}

# Who holds 127.0.0.1:PORT (listening, or as the source port of a connection),
# e.g. `users:(("order-service",pid=123,fd=9))`; empty if nobody.
port_holder() {
  ss -Htanp "( sport = :$1 )" 2>/dev/null | awk '{print $NF}' | sort -u | tr '\n' ' '
}

start() {
  local run_dir=$1 port_base=$2 database=$3 prefix=$4
  mkdir -p "$run_dir"
  local packages=()
  for service in "${SERVICES[@]}"; do packages+=(-p "$service-service"); done
  cargo build --profile "$PROFILE" "${packages[@]}"

  # Every port free before anything starts: say who holds one that is not.
  local busy=0 port holder
  for service in "${SERVICES[@]}"; do
    alive "$run_dir" "$service" && continue
    for port in "$(port_of "$service" "$port_base")" "$(metrics_port_of "$service" "$port_base")"; do
      holder=$(port_holder "$port" || true)
      if [ -n "$holder" ]; then
        echo "port $port ($service-service) is in use by: $holder" >&2
        busy=1
      fi
    done
  done
  if ((busy)); then
    echo "free those ports (or stop what holds them) and try again" >&2
    return 1
  fi

  for service in "${SERVICES[@]}"; do
    if alive "$run_dir" "$service"; then
      echo "$service-service already running (pid $(cat "$run_dir/$service.pid"))"
      continue
    fi
    local role="${service}_svc"
    GRPC_ADDR="127.0.0.1:$(port_of "$service" "$port_base")" \
      METRICS_ADDR="127.0.0.1:$(metrics_port_of "$service" "$port_base")" \
      DATABASE_URL="postgres://$role:$role@$PG_HOST/$database" \
      ADMIN_DATABASE_URL="$ADMIN_DATABASE_URL" \
      AMQP_PREFIX="$prefix" \
      ORDER_ADDR="http://127.0.0.1:$(port_of order "$port_base")" \
      CUSTOMER_ADDR="http://127.0.0.1:$(port_of customer "$port_base")" \
      INVENTORY_ADDR="http://127.0.0.1:$(port_of inventory "$port_base")" \
      nohup "$BIN_DIR/$service-service" >"$run_dir/$service.log" 2>&1 &
    echo $! >"$run_dir/$service.pid"
  done

  local deadline=$((SECONDS + 90))
  for service in "${SERVICES[@]}"; do
    until GRPC_ADDR="127.0.0.1:$(port_of "$service" "$port_base")" \
      "$BIN_DIR/$service-service" healthcheck >/dev/null 2>&1; do
      if ! alive "$run_dir" "$service" || ((SECONDS > deadline)); then
        echo "$service-service did not become SERVING; last log lines:" >&2
        tail -n 20 "$run_dir/$service.log" >&2
        echo "stopping what was started" >&2
        stop "$run_dir" >&2
        return 1
      fi
      sleep 0.2
    done
  done
  for service in "${SERVICES[@]}"; do
    printf '  %-18s 127.0.0.1:%s  metrics 127.0.0.1:%s/metrics  (log: %s)\n' "$service-service" \
      "$(port_of "$service" "$port_base")" "$(metrics_port_of "$service" "$port_base")" "$run_dir/$service.log"
  done
}

stop() {
  local run_dir=$1 service pid
  for service in "${SERVICES[@]}"; do
    if alive "$run_dir" "$service"; then
      pid=$(cat "$run_dir/$service.pid")
      kill -TERM "$pid"
      for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "$service-service (pid $pid) ignored SIGTERM for 15 s; killing it" >&2
        kill -KILL "$pid"
      fi
      echo "stopped $service-service (pid $pid)"
    fi
    rm -f "$run_dir/$service.pid"
  done
}

case ${1:-} in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start RUN_DIR PORT_BASE DATABASE PREFIX | stop RUN_DIR" >&2; exit 2 ;;
esac

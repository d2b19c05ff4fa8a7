#!/usr/bin/env bash
# The production topology on one machine, as native processes: a 3-node
# RabbitMQ cluster, a Postgres primary + streaming replica per service, and two
# replicas of every service. Isolated from the machine's own Postgres
# (5432) and RabbitMQ (5672, rabbit@localhost, epmd 4369): own ports, node
# names, epmd, cookie and data directories, all under one state directory.
#
#   scripts/cluster.sh up                  start everything, wait until all 8 services are SERVING
#   scripts/cluster.sh down                stop exactly what `up` started, delete the state directory
#   scripts/cluster.sh status              one line per process; exit 0 only if all of them run
#   scripts/cluster.sh env                 `export NAME='value'` lines (see below)
#   scripts/cluster.sh svc-start SERVICE N             start replica N (1|2), wait for SERVING
#   scripts/cluster.sh svc-stop SERVICE N [TERM|KILL]  stop it and wait (TERM: 20 s, then KILL)
#   scripts/cluster.sh svc-pid SERVICE N               print its pid (exit 1 if it does not run)
#   scripts/cluster.sh rabbit-stop N [kill]            stop node N (1|2|3) cleanly, or kill -9 its VM
#   scripts/cluster.sh rabbit-start N                  start node N from its data, wait until it runs
#   scripts/cluster.sh rabbit-leaders                  "NODE COUNT" per node: quorum queues it leads
#   scripts/cluster.sh rabbitmqctl N ARGS...           rabbitmqctl against node N, with its cookie
#   scripts/cluster.sh pg-stop SERVICE primary|replica [immediate]
#   scripts/cluster.sh pg-start SERVICE primary|replica
#   scripts/cluster.sh pg-promote SERVICE              promote SERVICE's replica (pg_ctl promote -w)
#
# Ports (127.0.0.1 only):
#   RabbitMQ nodes dbps-c1/c2/c3@localhost: AMQP 5680/5681/5682, distribution
#     25680/25681/25682, epmd 4370, rabbitmqctl 35690-35699. No management plugin.
#   Postgres primaries 5441 order, 5442 customer, 5443 inventory, 5444 reporting;
#     their streaming replicas 5451..5454 in the same order. Database `dbps`.
#   Services: gRPC 5006x (replica 1) and 5007x (replica 2), metrics 916x and
#     917x, x = 1 order, 2 customer, 3 inventory, 4 reporting.
#
# State directory (CLUSTER_DIR, default /tmp/dbps-cluster; the postgres user
# must be able to reach it): svc/<service>-<N>.pid and .log;
# pg/<service>-primary|replica/ (data directories, owned by postgres) and
# pg/log/*.log; rabbit/c<N>/ (home/.erlang.cookie, mnesia/, log/, beam.pid);
# rabbit/epmd.pid and epmd.log.
#
# Environment: CLUSTER_DIR; BIN_DIR (service binaries, default
# target/release, relative to the repository); CLUSTER_AMQP_URL (one AMQP URL,
# or a list, given to every service instead of the three nodes); PG_BIN
# (default /usr/lib/postgresql/15/bin); CLUSTER_KEEP=1 (a failed `up` leaves
# what it started, for a look).
#
# `env` prints CLUSTER_DIR, CLUSTER_BIN_DIR, CLUSTER_AMQP_URLS (the three
# nodes, comma-separated), CLUSTER_AMQP_URL_1..3, CLUSTER_AMQP_PREFIX,
# CLUSTER_RABBIT_NODES, and per service (ORDER, CUSTOMER, INVENTORY, REPORTING):
# <S>_DATABASE_URL and <S>_ADMIN_DATABASE_URL (as the services get them),
# <S>_PG_PRIMARY_URL and <S>_PG_REPLICA_URL (superuser, one server each),
# <S>_GRPC_1/2 and <S>_METRICS_1/2 (host:port).
#
# `status` exits 1 if the state directory is missing or anything is down or a
# service does not report SERVING.
#
# `up` while anything recorded in CLUSTER_DIR still runs refuses (exit 1): run
# `down` first. A state directory left by a cluster whose processes are all
# gone is deleted and started afresh. If `up` fails, or is interrupted (INT,
# TERM), it prints the failing log and stops whatever it had started.
#
# svc-start, pg-start and rabbit-start are no-ops for what already runs;
# svc-stop, pg-stop and rabbit-stop for what is already stopped. pg-start of a
# primary whose replica was promoted starts a second read-write server: the
# caller decides whether it wants that.
#
# Services are stopped with SIGTERM (SIGKILL after 15 s in `down`, 20 s in
# svc-stop), Postgres with `pg_ctl stop -m fast`, RabbitMQ nodes with
# `rabbitmqctl stop` (then kill -9 if still there), epmd by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/dbps-cluster}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
[[ $BIN_DIR = /* ]] || BIN_DIR=$REPO/$BIN_DIR
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
# Call RabbitMQ's own scripts, not Debian's /usr/sbin wrappers: those `su
# rabbitmq` when run as root and `cd /var/lib/rabbitmq`, i.e. the machine's
# node's home and cookie.
RABBIT_SBIN=${RABBIT_SBIN:-/usr/lib/rabbitmq/bin}
EPMD=${EPMD:-$(command -v epmd || echo /usr/lib/erlang/bin/epmd)}

SERVICES=(order customer inventory reporting)
RABBIT_NODES=(1 2 3)
EPMD_PORT=4370
# Every process we start carries this variable, so `down` can find a straggler
# exactly (by its environment) even if a pid file was lost.
MARK_VAR=DBPS_CLUSTER_MARK

# --- small helpers ----------------------------------------------------------

say() { echo "cluster: $*"; }
die() { echo "cluster: $*" >&2; exit 1; }

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# True if PID is a live process (a zombie counts as gone) whose command line
# contains NEEDLE: a recycled pid never passes for ours.
pid_is() {
  local pid=$1 needle=$2 state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

# Waits until PID is gone; false if it still runs after SECONDS.
wait_gone() {
  local pid=$1 seconds=$2 i
  for ((i = 0; i < seconds * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 0
    sleep 0.1
  done
  return 1
}

now() { date +%s.%N; }
elapsed_since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }

svc_index() {
  case $1 in
    order) echo 1 ;; customer) echo 2 ;; inventory) echo 3 ;; reporting) echo 4 ;;
    *) die "unknown service '$1' (order, customer, inventory, reporting)" ;;
  esac
}
check_replica() { [[ $1 =~ ^[12]$ ]] || die "replica must be 1 or 2, not '$1'"; }
check_node() { [[ $1 =~ ^[123]$ ]] || die "RabbitMQ node must be 1, 2 or 3, not '$1'"; }
check_role() { [[ $1 = primary || $1 = replica ]] || die "expected primary or replica, not '$1'"; }

# --- addresses ----------------------------------------------------------------

grpc_port() { echo $(($([ "$2" = 1 ] && echo 50060 || echo 50070) + $(svc_index "$1"))); }
metrics_port() { echo $(($([ "$2" = 1 ] && echo 9160 || echo 9170) + $(svc_index "$1"))); }
pg_port() { echo $(($([ "$2" = primary ] && echo 5440 || echo 5450) + $(svc_index "$1"))); }
rabbit_node() { echo "dbps-c$1@localhost"; }
amqp_port() { echo $((5679 + $1)); }
amqp_node_url() { echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$1")/%2f"; }

# The three nodes, starting from node START, so replicas spread their
# connections over the cluster.
amqp_urls() {
  local start=$1 i n urls=()
  if [ -n "${CLUSTER_AMQP_URL:-}" ]; then echo "$CLUSTER_AMQP_URL"; return; fi
  for i in 0 1 2; do
    n=$(((start - 1 + i) % 3 + 1))
    urls+=("$(amqp_node_url "$n")")
  done
  (IFS=,; echo "${urls[*]}")
}

# Both servers, so libpq-style clients find whichever one takes writes (after a
# promotion, the former replica).
pg_hosts() { echo "127.0.0.1:$(pg_port "$1" primary),127.0.0.1:$(pg_port "$1" replica)"; }
database_url() { echo "postgres://${1}_svc:${1}_svc@$(pg_hosts "$1")/dbps?target_session_attrs=read-write"; }
admin_url() { echo "postgres://postgres@$(pg_hosts "$1")/postgres?target_session_attrs=read-write"; }

# --- state directory ---------------------------------------------------------

svc_dir() { echo "$CLUSTER_DIR/svc"; }
svc_pidfile() { echo "$CLUSTER_DIR/svc/$1-$2.pid"; }
svc_log() { echo "$CLUSTER_DIR/svc/$1-$2.log"; }
rabbit_dir() { echo "$CLUSTER_DIR/rabbit/c$1"; }
rabbit_pidfile() { echo "$(rabbit_dir "$1")/beam.pid"; }
epmd_pidfile() { echo "$CLUSTER_DIR/rabbit/epmd.pid"; }
pg_dir() { echo "$CLUSTER_DIR/pg/$1-$2"; }
pg_log() { echo "$CLUSTER_DIR/pg/log/$1-$2.log"; }
MARKER_FILE=.dbps-cluster

# --- services ----------------------------------------------------------------

svc_pid() { cat "$(svc_pidfile "$1" "$2")" 2>/dev/null || true; }
svc_alive() { pid_is "$(svc_pid "$1" "$2")" "$1-service"; }

# The environment of replica N of SERVICE, into the array SVC_ENV.
svc_env() {
  local svc=$1 n=$2
  SVC_ENV=(
    "GRPC_ADDR=127.0.0.1:$(grpc_port "$svc" "$n")"
    "METRICS_ADDR=127.0.0.1:$(metrics_port "$svc" "$n")"
    "DATABASE_URL=$(database_url "$svc")"
    "ADMIN_DATABASE_URL=$(admin_url "$svc")"
    "AMQP_URL=$(amqp_urls "$n")"
    "AMQP_PREFIX=dbps"
    "ORDER_ADDR=http://127.0.0.1:$(grpc_port order "$n")"
    "CUSTOMER_ADDR=http://127.0.0.1:$(grpc_port customer "$n")"
    "INVENTORY_ADDR=http://127.0.0.1:$(grpc_port inventory "$n")"
    "SHUTDOWN_GRACE=10s"
    "RUST_LOG=${RUST_LOG:-info}"
    "$MARK_VAR=$CLUSTER_DIR"
  )
}

# Starts replica N of SERVICE in the background (no wait).
svc_launch() {
  local svc=$1 n=$2 bin=$BIN_DIR/$1-service log
  [ -x "$bin" ] || die "$bin is missing: cargo build --release -p $svc-service (or set BIN_DIR)"
  svc_env "$svc" "$n"
  log=$(svc_log "$svc" "$n")
  echo "--- $(date -Is) start" >>"$log"
  # env and nohup exec, so $! is the service's own pid.
  env "${SVC_ENV[@]}" nohup "$bin" </dev/null >>"$log" 2>&1 &
  echo $! >"$(svc_pidfile "$svc" "$n")"
}

svc_serving() {
  GRPC_ADDR="127.0.0.1:$(grpc_port "$1" "$2")" "$BIN_DIR/$1-service" healthcheck >/dev/null 2>&1
}

# Waits until every "SERVICE:N" given reports SERVING, within SECONDS.
svc_wait_serving() {
  local seconds=$1 deadline item svc n
  shift
  deadline=$((SECONDS + seconds))
  for item in "$@"; do
    svc=${item%:*} n=${item#*:}
    until svc_serving "$svc" "$n"; do
      if ! svc_alive "$svc" "$n" || ((SECONDS > deadline)); then
        echo "cluster: $svc-service replica $n did not become SERVING; last log lines:" >&2
        tail -n 25 "$(svc_log "$svc" "$n")" >&2
        return 1
      fi
      sleep 0.2
    done
  done
}

# SIGNAL to replica N of SERVICE, then wait; TERM escalates to KILL after SECONDS.
svc_stop() {
  local svc=$1 n=$2 sig=${3:-TERM} seconds=${4:-20} pid
  if ! svc_alive "$svc" "$n"; then
    rm -f "$(svc_pidfile "$svc" "$n")"
    return 0
  fi
  pid=$(svc_pid "$svc" "$n")
  kill "-$sig" "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$seconds"; then
    echo "cluster: $svc-service replica $n (pid $pid) still runs after SIG$sig for $seconds s; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "$svc-service replica $n (pid $pid) survived SIGKILL"
  fi
  rm -f "$(svc_pidfile "$svc" "$n")"
}

# --- RabbitMQ ----------------------------------------------------------------

# Exports node N's environment (call in a subshell). HOME holds the cluster's
# cookie; the empty env file keeps /etc/rabbitmq/rabbitmq-env.conf (which pins
# NODENAME=rabbit@localhost) out; the config file replaces /etc/rabbitmq's.
rabbit_env() {
  local n=$1 dir
  dir=$(rabbit_dir "$n")
  export HOME=$dir/home
  export ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT
  RABBITMQ_NODENAME=$(rabbit_node "$n")
  RABBITMQ_NODE_PORT=$(amqp_port "$n")
  RABBITMQ_DIST_PORT=$((25679 + n))
  export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
  export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
  export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
  export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
  export RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log
  export RABBITMQ_PID_FILE=$dir/beam.pid
  # rabbitmqctl's own distribution ports: not the machine's 35672-35682.
  export RABBITMQ_CTL_DIST_PORT_MIN=35690 RABBITMQ_CTL_DIST_PORT_MAX=35699
  # Distribution on loopback only, as the machine's node does.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export "$MARK_VAR=$CLUSTER_DIR"
  unset ERL_FLAGS RABBITMQ_ERLANG_COOKIE
}

# rabbitmqctl against node N; `timeout` because a call to a node that is
# half-way down can otherwise hang.
rctl() { rctl_within 300 "$@"; }
rctl_within() {
  local seconds=$1 n=$2
  shift 2
  (rabbit_env "$n" && cd "$(rabbit_dir "$n")" &&
    timeout "$seconds" "$RABBIT_SBIN/rabbitmqctl" -n "$(rabbit_node "$n")" "$@")
}

rabbit_pid() { cat "$(rabbit_pidfile "$1")" 2>/dev/null || true; }
# The VM's command line names its own HOME (-home): exact.
rabbit_alive() { pid_is "$(rabbit_pid "$1")" "-home $(rabbit_dir "$1")/home "; }
epmd_alive() { pid_is "$(cat "$(epmd_pidfile)" 2>/dev/null || true)" "-port $EPMD_PORT"; }

rabbit_prepare() {
  local cookie n dir
  # Hex digits, as Erlang wants letters and digits; one cookie for the three nodes.
  cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  for n in "${RABBIT_NODES[@]}"; do
    dir=$(rabbit_dir "$n")
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    printf '%s' "$cookie" >"$dir/home/.erlang.cookie"
    chmod 400 "$dir/home/.erlang.cookie"
    : >"$dir/rabbitmq-env.conf"
    echo '[].' >"$dir/enabled_plugins"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
# guest may connect from loopback only (the default, said out loud).
loopback_users.guest = true
# The production setting for an odd-sized cluster: a minority pauses rather
# than diverging.
cluster_partition_handling = pause_minority
log.file.level = info
log.console = false
EOF
  done
}

epmd_start() {
  epmd_alive && return 0
  # Our own epmd on 4370; the machine's on 4369 is left alone. Foreground
  # under nohup so $! is its pid.
  env "$MARK_VAR=$CLUSTER_DIR" ERL_EPMD_ADDRESS=127.0.0.1 \
    nohup "$EPMD" -port "$EPMD_PORT" -address 127.0.0.1 \
    </dev/null >>"$CLUSTER_DIR/rabbit/epmd.log" 2>&1 &
  echo $! >"$(epmd_pidfile)"
  local deadline=$((SECONDS + 10))
  until port_open "$EPMD_PORT"; do
    ((SECONDS < deadline)) || die "epmd did not listen on $EPMD_PORT"
    sleep 0.1
  done
}

# Boots node N detached (no wait).
rabbit_launch() {
  local n=$1
  rm -f "$(rabbit_pidfile "$n")"
  (rabbit_env "$n" && cd "$(rabbit_dir "$n")" &&
    "$RABBIT_SBIN/rabbitmq-server" -detached </dev/null >>"$(rabbit_dir "$n")/log/startup.log" 2>&1)
}

# Waits until node N has written its pid file and runs the rabbit application.
rabbit_wait() {
  local n=$1 seconds=${2:-120}
  if ! rctl_within $((seconds + 30)) "$n" wait "$(rabbit_pidfile "$n")" --timeout "$seconds" >/dev/null 2>&1; then
    echo "cluster: RabbitMQ node $(rabbit_node "$n") did not start; last log lines:" >&2
    tail -n 20 "$(rabbit_dir "$n")/log/$(rabbit_node "$n").log" "$(rabbit_dir "$n")/log/startup.log" >&2 2>/dev/null || true
    return 1
  fi
}

rabbit_up() {
  local n running
  rabbit_prepare
  epmd_start
  for n in "${RABBIT_NODES[@]}"; do rabbit_launch "$n"; done
  for n in "${RABBIT_NODES[@]}"; do rabbit_wait "$n"; done
  # Nodes 2 and 3 join node 1 (a fresh node joins without a reset).
  for n in 2 3; do
    rctl "$n" stop_app >/dev/null
    rctl "$n" join_cluster "$(rabbit_node 1)" >/dev/null
    rctl "$n" start_app >/dev/null
  done
  running=$(rctl 1 eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo 0)
  [ "$running" = 3 ] || die "RabbitMQ cluster has $running running nodes, not 3"
}

# Stops node N: cleanly (rabbitmqctl stop, then kill -9 if it lingers), or
# with kill -9 of its VM right away.
rabbit_stop() {
  local n=$1 how=${2:-clean} pid
  pid=$(rabbit_pid "$n")
  rabbit_alive "$n" || return 0
  if [ "$how" = clean ]; then
    # With the pid file, `stop` returns once the VM has exited.
    rctl_within 60 "$n" stop "$(rabbit_pidfile "$n")" >/dev/null 2>&1 || true
    wait_gone "$pid" 30 && return 0
    echo "cluster: RabbitMQ node $(rabbit_node "$n") (pid $pid) did not stop; kill -9" >&2
  fi
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" 10 || die "RabbitMQ node $(rabbit_node "$n") (pid $pid) survived SIGKILL"
}

rabbit_leaders() {
  local n out="" counts answered=
  # Ask the first running node that answers: a quorum queue's leader is
  # cluster-wide knowledge.
  for n in "${RABBIT_NODES[@]}"; do
    rabbit_alive "$n" || continue
    if out=$(rctl_within 60 "$n" -q list_queues name type leader --no-table-headers 2>/dev/null); then
      answered=1
      break
    fi
  done
  [ -n "$answered" ] || die "no RabbitMQ node answers"
  counts=$(awk -F'\t' '$2 == "quorum" { c[$3]++ } END { for (k in c) print k, c[k] }' <<<"$out")
  for n in "${RABBIT_NODES[@]}"; do
    echo "$(rabbit_node "$n") $(awk -v node="$(rabbit_node "$n")" '$1 == node { print $2 }' <<<"$counts" | grep . || echo 0)"
  done
}

rabbit_any_alive() {
  local n
  for n in "${RABBIT_NODES[@]}"; do rabbit_alive "$n" && return 0; done
  return 1
}

# --- Postgres ----------------------------------------------------------------

# Postgres refuses to run as root: every server command runs as `postgres`.
as_pg() { runuser -u postgres -- env "$MARK_VAR=$CLUSTER_DIR" "$@"; }

psql_at() { "$PG_BIN/psql" -h 127.0.0.1 -p "$1" -U postgres -d postgres -X -Atq -v ON_ERROR_STOP=1 -c "$2"; }

pg_postmaster_pid() { head -n 1 "$(pg_dir "$1" "$2")/postmaster.pid" 2>/dev/null || true; }
pg_alive() { pid_is "$(pg_postmaster_pid "$1" "$2")" "$(pg_dir "$1" "$2")"; }

pg_start() {
  local svc=$1 role=$2
  as_pg "$PG_BIN/pg_ctl" -D "$(pg_dir "$svc" "$role")" -l "$(pg_log "$svc" "$role")" -w -t 60 start >/dev/null ||
    { tail -n 20 "$(pg_log "$svc" "$role")" >&2; die "Postgres $svc $role did not start"; }
}

pg_stop() {
  local svc=$1 role=$2 mode=${3:-fast} pid
  pg_alive "$svc" "$role" || return 0
  pid=$(pg_postmaster_pid "$svc" "$role")
  if ! as_pg "$PG_BIN/pg_ctl" -D "$(pg_dir "$svc" "$role")" -m "$mode" -w -t 60 stop >/dev/null; then
    echo "cluster: Postgres $svc $role (pid $pid) did not stop; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait_gone "$pid" 15 || die "Postgres $svc $role (pid $pid) is still running"
}

pg_init_primary() {
  local svc=$1 dir
  dir=$(pg_dir "$svc" primary)
  # --no-sync: a throwaway cluster need not wait for initdb's fsyncs; the
  # servers themselves run with fsync on.
  as_pg "$PG_BIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
  cat >>"$dir/postgresql.conf" <<EOF

# scripts/cluster.sh
port = $(pg_port "$svc" primary)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$CLUSTER_DIR/pg'
shared_buffers = 32MB
max_connections = 100
wal_level = replica
max_wal_senders = 5
wal_keep_size = 256MB
hot_standby = on
fsync = on
synchronous_commit = on
tcp_keepalives_idle = 5
tcp_keepalives_interval = 2
tcp_keepalives_count = 3
EOF
  cat >"$dir/pg_hba.conf" <<EOF
local all         all              trust
host  all         all 127.0.0.1/32 trust
local replication all              trust
host  replication all 127.0.0.1/32 trust
EOF
}

pg_init_replica() {
  local svc=$1 dir
  dir=$(pg_dir "$svc" replica)
  # -R writes primary_conninfo and standby.signal; -X stream copies the WAL
  # of the backup as it is written.
  as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$(pg_port "$svc" primary)" -U postgres \
    -D "$dir" -R -X stream -c fast --no-sync >/dev/null
  # The copied postgresql.conf names the primary's port and its synchronous
  # standby: the last line wins. Once promoted, this server has no standby to
  # wait for.
  printf 'port = %s\nsynchronous_standby_names = %s\n' "$(pg_port "$svc" replica)" "''" >>"$dir/postgresql.conf"
}

pg_streaming() {
  [ "$(psql_at "$(pg_port "$1" primary)" \
    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null)" = 1 ]
}

pg_up() {
  local svc pids=() pid deadline
  mkdir -p "$CLUSTER_DIR/pg/log"
  chown -R postgres: "$CLUSTER_DIR/pg"
  for svc in "${SERVICES[@]}"; do pg_init_primary "$svc" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done
  pids=()
  for svc in "${SERVICES[@]}"; do pg_start "$svc" primary & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done
  pids=()
  for svc in "${SERVICES[@]}"; do
    psql_at "$(pg_port "$svc" primary)" "CREATE DATABASE dbps"
    { pg_init_replica "$svc" && pg_start "$svc" replica; } & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  deadline=$((SECONDS + 30))
  for svc in "${SERVICES[@]}"; do
    until pg_streaming "$svc"; do
      ((SECONDS < deadline)) || die "the $svc replica is not streaming from its primary"
      sleep 0.2
    done
    # From now on a commit returns only once the standby has it too, so
    # promoting the standby loses no acknowledged write (R10). The cost: a
    # primary whose standby is down waits for it to come back.
    psql_at "$(pg_port "$svc" primary)" "ALTER SYSTEM SET synchronous_standby_names = '*'" >/dev/null
    psql_at "$(pg_port "$svc" primary)" "SELECT pg_reload_conf()" >/dev/null
  done
}

# --- whole cluster -----------------------------------------------------------

anything_alive() {
  local svc n role
  epmd_alive && return 0
  rabbit_any_alive && return 0
  for svc in "${SERVICES[@]}"; do
    for n in 1 2; do svc_alive "$svc" "$n" && return 0; done
    for role in primary replica; do pg_alive "$svc" "$role" && return 0; done
  done
  return 1
}

# Processes carrying our mark that the orderly stops missed (say, a pid file
# lost to a crash at the wrong moment).
stragglers() {
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = $$ ] && continue
    { tr '\0' '\n' <"/proc/$p/environ"; } 2>/dev/null | grep -qxF "$MARK_VAR=$CLUSTER_DIR" || continue
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] || continue
    echo "$p"
  done
}

check_ports_free() {
  local port svc n busy=()
  local ports=("$EPMD_PORT" 5680 5681 5682 25680 25681 25682)
  for svc in "${SERVICES[@]}"; do
    ports+=("$(pg_port "$svc" primary)" "$(pg_port "$svc" replica)")
    for n in 1 2; do ports+=("$(grpc_port "$svc" "$n")" "$(metrics_port "$svc" "$n")"); done
  done
  for port in "${ports[@]}"; do port_open "$port" && busy+=("$port"); done
  ((${#busy[@]} == 0)) || die "ports already in use: ${busy[*]} (another cluster, or scripts/cluster.sh down first)"
}

cmd_up() {
  local start svc n items=()
  command -v runuser >/dev/null || die "runuser is missing"
  [ -x "$PG_BIN/initdb" ] || die "no Postgres binaries in $PG_BIN (set PG_BIN)"
  [ -x "$RABBIT_SBIN/rabbitmq-server" ] || die "no RabbitMQ scripts in $RABBIT_SBIN (set RABBIT_SBIN)"
  for svc in "${SERVICES[@]}"; do
    [ -x "$BIN_DIR/$svc-service" ] || die "$BIN_DIR/$svc-service is missing: make cluster-up builds it"
  done
  if [ -e "$CLUSTER_DIR" ]; then
    anything_alive && die "already up ($CLUSTER_DIR); scripts/cluster.sh down first"
    say "removing the state of a cluster that is no longer running"
    remove_state_dir
  fi
  check_ports_free

  start=$(now)
  mkdir -p "$CLUSTER_DIR" "$(svc_dir)" "$CLUSTER_DIR/rabbit"
  chmod 755 "$CLUSTER_DIR"
  touch "$CLUSTER_DIR/$MARKER_FILE"
  # Whatever fails from here on, stop what was started.
  trap 'up_failed $?' EXIT
  # Interrupted (Ctrl-C, a caller's timeout): exit so that the EXIT trap cleans up.
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # Postgres and RabbitMQ boot independently: side by side.
  say "starting 8 Postgres servers and 3 RabbitMQ nodes"
  (pg_up) &
  PG_JOB=$!
  rabbit_up
  if ! wait "$PG_JOB"; then
    PG_JOB=
    die "Postgres did not come up (logs above)"
  fi
  PG_JOB=
  say "Postgres and RabbitMQ ready after $(elapsed_since "$start") s; starting 8 services"

  for svc in "${SERVICES[@]}"; do
    for n in 1 2; do svc_launch "$svc" "$n"; items+=("$svc:$n"); done
  done
  svc_wait_serving 90 "${items[@]}"
  trap - EXIT INT TERM
  say "up in $(elapsed_since "$start") s (state in $CLUSTER_DIR)"
  for svc in "${SERVICES[@]}"; do
    printf '  %-18s 127.0.0.1:%s 127.0.0.1:%s  Postgres %s (primary) %s (replica)\n' "$svc-service" \
      "$(grpc_port "$svc" 1)" "$(grpc_port "$svc" 2)" "$(pg_port "$svc" primary)" "$(pg_port "$svc" replica)"
  done
  echo "  RabbitMQ           $(rabbit_node 1) :5680, $(rabbit_node 2) :5681, $(rabbit_node 3) :5682"
}

PG_JOB=
up_failed() {
  local rc=$1
  trap - EXIT INT TERM
  ((rc != 0)) || return 0
  # Let a Postgres bring-up still under way finish first (it has timeouts),
  # so that `down` sees everything it started.
  # (No redirection on this `wait`: in an EXIT trap after a signal, bash
  # would leave it in place for the rest of the trap.)
  [ -z "$PG_JOB" ] || wait "$PG_JOB" || true
  if [ -n "${CLUSTER_KEEP:-}" ]; then
    echo "cluster: up failed; CLUSTER_KEEP is set, so it stays as it is" >&2
  else
    echo "cluster: up failed; stopping what it started (CLUSTER_KEEP=1 keeps it)" >&2
    (cmd_down) >&2 || true
  fi
  exit "$rc"
}

remove_state_dir() {
  # Only a directory this script made: never rm -rf an arbitrary CLUSTER_DIR.
  [[ $CLUSTER_DIR = /?* && $CLUSTER_DIR != / ]] || die "refusing to delete CLUSTER_DIR=$CLUSTER_DIR"
  if [ -e "$CLUSTER_DIR" ] && [ ! -e "$CLUSTER_DIR/$MARKER_FILE" ]; then
    die "$CLUSTER_DIR was not made by this script; not deleting it"
  fi
  rm -rf "$CLUSTER_DIR"
}

cmd_down() {
  local svc n role pids=() pid left
  if [ ! -e "$CLUSTER_DIR" ]; then
    say "nothing to stop ($CLUSTER_DIR does not exist)"
    return 0
  fi
  # Services first, all at once: they drain in-flight work on SIGTERM, which
  # needs their database and broker.
  for svc in "${SERVICES[@]}"; do
    for n in 1 2; do
      svc_alive "$svc" "$n" && { svc_stop "$svc" "$n" TERM 15 & pids+=($!); }
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  pids=()
  # Then the brokers and databases, side by side.
  for n in "${RABBIT_NODES[@]}"; do rabbit_stop "$n" clean & pids+=($!); done
  for svc in "${SERVICES[@]}"; do
    for role in replica primary; do pg_stop "$svc" "$role" fast & pids+=($!); done
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  if epmd_alive; then
    pid=$(cat "$(epmd_pidfile)")
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
  fi
  left=$(stragglers)
  if [ -n "$left" ]; then
    echo "cluster: killing leftover processes of this cluster: $(echo "$left" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
  fi
  [ -z "$(stragglers)" ] || die "processes of this cluster are still running: $(stragglers | tr '\n' ' ')"
  remove_state_dir
  say "down; $CLUSTER_DIR removed"
}

cmd_status() {
  local svc n role ok=0 pid state
  if [ ! -e "$CLUSTER_DIR" ]; then
    say "down ($CLUSTER_DIR does not exist)"
    return 1
  fi
  if epmd_alive; then echo "epmd                 running  pid $(cat "$(epmd_pidfile)")  127.0.0.1:$EPMD_PORT"
  else echo "epmd                 DOWN"; ok=1; fi
  for n in "${RABBIT_NODES[@]}"; do
    if rabbit_alive "$n"; then
      printf '%-20s running  pid %s  127.0.0.1:%s\n' "$(rabbit_node "$n")" "$(rabbit_pid "$n")" "$(amqp_port "$n")"
    else
      printf '%-20s DOWN\n' "$(rabbit_node "$n")"; ok=1
    fi
  done
  for svc in "${SERVICES[@]}"; do
    for role in primary replica; do
      if pg_alive "$svc" "$role"; then
        state=$(psql_at "$(pg_port "$svc" "$role")" "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'read-write' END" 2>/dev/null || echo "not answering")
        printf '%-20s running  pid %s  127.0.0.1:%s  %s\n' "pg $svc $role" "$(pg_postmaster_pid "$svc" "$role")" "$(pg_port "$svc" "$role")" "$state"
      else
        printf '%-20s DOWN\n' "pg $svc $role"; ok=1
      fi
    done
  done
  for svc in "${SERVICES[@]}"; do
    for n in 1 2; do
      pid=$(svc_pid "$svc" "$n")
      if svc_alive "$svc" "$n"; then
        state=$(svc_serving "$svc" "$n" && echo SERVING || echo "NOT SERVING")
        [ "$state" = SERVING ] || ok=1
        printf '%-20s running  pid %s  127.0.0.1:%s  %s\n' "$svc-service $n" "$pid" "$(grpc_port "$svc" "$n")" "$state"
      else
        printf '%-20s DOWN\n' "$svc-service $n"; ok=1
      fi
    done
  done
  return "$ok"
}

cmd_env() {
  local svc n up
  printf "export %s='%s'\n" CLUSTER_DIR "$CLUSTER_DIR" CLUSTER_BIN_DIR "$BIN_DIR" \
    CLUSTER_AMQP_URLS "$(amqp_urls 1)" CLUSTER_AMQP_PREFIX dbps \
    CLUSTER_RABBIT_NODES "$(rabbit_node 1) $(rabbit_node 2) $(rabbit_node 3)"
  for n in "${RABBIT_NODES[@]}"; do
    printf "export %s='%s'\n" "CLUSTER_AMQP_URL_$n" "$(amqp_node_url "$n")"
  done
  for svc in "${SERVICES[@]}"; do
    up=${svc^^}
    printf "export %s='%s'\n" \
      "${up}_DATABASE_URL" "$(database_url "$svc")" \
      "${up}_ADMIN_DATABASE_URL" "$(admin_url "$svc")" \
      "${up}_PG_PRIMARY_URL" "postgres://postgres@127.0.0.1:$(pg_port "$svc" primary)/dbps" \
      "${up}_PG_REPLICA_URL" "postgres://postgres@127.0.0.1:$(pg_port "$svc" replica)/dbps"
    for n in 1 2; do
      printf "export %s='%s'\n" \
        "${up}_GRPC_$n" "127.0.0.1:$(grpc_port "$svc" "$n")" \
        "${up}_METRICS_$n" "127.0.0.1:$(metrics_port "$svc" "$n")"
    done
  done
}

# Subcommands that act on a running cluster need its state directory.
need_state() { [ -e "$CLUSTER_DIR/$MARKER_FILE" ] || die "the cluster is not up ($CLUSTER_DIR)"; }

usage() {
  sed -n '/^#   scripts/s/^#   //p' "$0" >&2
  exit 2
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case $cmd in
    up) [ $# = 0 ] || usage; cmd_up ;;
    down) [ $# = 0 ] || usage; cmd_down ;;
    status) [ $# = 0 ] || usage; cmd_status ;;
    env) [ $# = 0 ] || usage; cmd_env ;;
    svc-start)
      [ $# = 2 ] || usage
      svc_index "$1" >/dev/null; check_replica "$2"; need_state
      if svc_alive "$1" "$2"; then say "$1-service replica $2 already runs (pid $(svc_pid "$1" "$2"))"; return 0; fi
      svc_launch "$1" "$2"
      svc_wait_serving "${SVC_START_TIMEOUT:-60}" "$1:$2"
      ;;
    svc-stop)
      [ $# = 2 ] || [ $# = 3 ] || usage
      svc_index "$1" >/dev/null; check_replica "$2"; need_state
      case ${3:-TERM} in TERM | KILL) ;; *) die "signal must be TERM or KILL" ;; esac
      svc_stop "$1" "$2" "${3:-TERM}" 20
      ;;
    svc-pid)
      [ $# = 2 ] || usage
      svc_index "$1" >/dev/null; check_replica "$2"
      svc_alive "$1" "$2" || die "$1-service replica $2 is not running"
      svc_pid "$1" "$2"
      ;;
    rabbit-stop)
      [ $# = 1 ] || [ $# = 2 ] || usage
      check_node "$1"; need_state
      case ${2:-} in "") rabbit_stop "$1" clean ;; kill) rabbit_stop "$1" kill ;; *) usage ;; esac
      ;;
    rabbit-start)
      [ $# = 1 ] || usage
      check_node "$1"; need_state
      if rabbit_alive "$1"; then say "$(rabbit_node "$1") already runs"; return 0; fi
      epmd_start
      rabbit_launch "$1"
      rabbit_wait "$1" "${RABBIT_START_TIMEOUT:-300}"
      ;;
    rabbit-leaders) [ $# = 0 ] || usage; need_state; rabbit_leaders ;;
    rabbitmqctl) [ $# -ge 1 ] || usage; check_node "$1"; need_state; rctl "$@" ;;
    pg-stop)
      [ $# = 2 ] || [ $# = 3 ] || usage
      svc_index "$1" >/dev/null; check_role "$2"; need_state
      case ${3:-} in "") pg_stop "$1" "$2" fast ;; immediate) pg_stop "$1" "$2" immediate ;; *) usage ;; esac
      ;;
    pg-start)
      [ $# = 2 ] || usage
      svc_index "$1" >/dev/null; check_role "$2"; need_state
      if pg_alive "$1" "$2"; then say "Postgres $1 $2 already runs"; return 0; fi
      pg_start "$1" "$2"
      ;;
    pg-promote)
      [ $# = 1 ] || usage
      svc_index "$1" >/dev/null; need_state
      pg_alive "$1" replica || die "the $1 replica is not running"
      as_pg "$PG_BIN/pg_ctl" -D "$(pg_dir "$1" replica)" -w -t 60 promote >/dev/null
      ;;
    *) usage ;;
  esac
}

main "$@"

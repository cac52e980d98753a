#!/usr/bin/env bash
# benches/instructions.sh — user-space instructions per transaction of capgate and of
# PgBouncer (session mode), counted by valgrind (callgrind) over the same fixed pgbench run;
# with DB=mysql, of capgate's MySQL front end and of MariaDB itself over a fixed sysbench run.
#
# Why: on a shared 2-core machine TPS and even CPU time per transaction move with the other
# work on it; the instructions a proxy executes per transaction do not. They leave out the
# kernel (socket calls, context switches), which /proc CPU time in benches/pgbench.sh covers;
# this script measures the part capgate's own code can change.
#
# What it does: a throwaway PostgreSQL (scale 1); each proxy started under
# `valgrind --tool=callgrind --instr-atstart=no`; a warm-up run; instrumentation switched on
# (callgrind_control -i on); `pgbench -n -S -M $MODE -c $CLIENTS -j 2 -t $TX`; a dump; the
# dump's total instructions (Ir) divided by the transactions. Also the instructions per
# transaction of capgate's hottest functions (callgrind_annotate), to show where they go.
#
# DB=mysql: a throwaway MariaDB (4 tables x 10,000 rows, `sysbench oltp_read_write prepare`)
# started under callgrind itself (as the mysql user, instrumentation off); capgate under
# callgrind in front of it. Counted: `sysbench $WORKLOAD --threads=$CLIENTS
# --events=$CLIENTS*$TX` through capgate (capgate's instructions), then the same run direct
# (MariaDB's instructions: what the database spends per transaction, the yardstick the
# proxy's cost is read against; there is no PgBouncer for MySQL here). A transaction is
# sysbench's: one statement for oltp_point_select, BEGIN + 14 statements + COMMIT for
# oltp_read_only. PS_MODE=auto: server-side prepared statements (sysbench's default);
# PS_MODE=disable: text queries (COM_QUERY), which capgate classifies.
#
# Usage: benches/instructions.sh   (environment: MODE=prepared CLIENTS=8 TX=2000 (per client)
#        CAPGATE_BIN=target/release/capgate CAPGATE_WORKERS= KEEP_TMP=0
#        DB=postgres|mysql; mysql: WORKLOAD=oltp_point_select|oltp_read_only PS_MODE=auto|disable)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DB="${DB:-postgres}"
MODE="${MODE:-prepared}"
WORKLOAD="${WORKLOAD:-oltp_point_select}"
CLIENTS="${CLIENTS:-8}"
TX="${TX:-2000}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
KEEP_TMP="${KEEP_TMP:-0}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 2; }
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || die "valgrind (callgrind) is needed"
[[ "$DB" == postgres || "$DB" == mysql ]] || die "DB is postgres or mysql, not $DB"
ensure_capgate_bin

# capgate's hottest functions in callgrind dump $1 over $2 transactions.
hottest() {
    echo "capgate's hottest functions (own instructions per transaction, share of the total):"
    callgrind_annotate "$1" 2>/dev/null | awk -v n="$2" '/^-+$/ { s++ } s >= 3 && $1 ~ /^[0-9,]+$/ { v = $1; gsub(",", "", v); $1 = ""; $2 = ""; printf "  %8.0f %s\n", v / n, substr($0, 1, 160); if (++k == 25) exit }' || true
}

# The newest callgrind dump with prefix $1, its total instructions divided by $2
# transactions, printed for name $3.
per_transaction() {
    local prefix=$1 txs=$2 name=$3 dump ir
    dump="$(ls -t "$prefix".* 2>/dev/null | head -1)"
    [[ -n "$dump" ]] || die "no callgrind dump for $name"
    ir="$(sed -nE 's/^totals: ([0-9]+).*/\1/p' "$dump")"
    awk -v ir="$ir" -v n="$txs" -v name="$name" 'BEGIN { printf "%-10s %10.0f instructions per transaction (%d transactions)\n", name, ir / n, n }'
    [[ "$name" != capgate ]] || hottest "$dump" "$txs"
}

if [[ "$DB" == mysql ]]; then
    # shellcheck source=benches/instructions_mysql.sh
    . "$REPO_ROOT/benches/instructions_mysql.sh"
    exit 0
fi

TMP="$(mktemp -d /tmp/capgate-instr.XXXXXX)"
chmod 755 "$TMP"
chown postgres: "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    stop_capgate_and_postgres
    [[ "$KEEP_TMP" == 1 ]] || rm -rf "$TMP"
}
trap cleanup EXIT
read -r PGPORT CGPORT PBPORT < <(free_ports 3)
start_postgres "$PGPORT" "max_connections = 100" "synchronous_commit = off"
pgbench -i -q -s 1 -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$TMP/init.log" 2>&1 || die "pgbench -i failed"

# Run the counted pgbench against port $2 with the callgrind process $3 (controlled by the
# command in CTL, as the user that runs it); prints Ir per transaction.
count() {
    local name=$1 port=$2 pid=$3 out=$4
    wait_accepting "$name" "$port" "$pid" || die "$name under valgrind does not accept connections"
    pgbench -n -S -M "$MODE" -c "$CLIENTS" -j 2 -t 200 -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1 || die "warm-up failed"
    "${CTL[@]}" -i on "$pid" >/dev/null 2>&1
    pgbench -n -S -M "$MODE" -c "$CLIENTS" -j 2 -t "$TX" -h 127.0.0.1 -p "$port" -U postgres postgres >"$TMP/$name.pgbench" 2>&1 || die "pgbench through $name failed"
    "${CTL[@]}" -d "$pid" >/dev/null 2>&1
    "${CTL[@]}" -i off "$pid" >/dev/null 2>&1
    sleep 1
    local txs
    txs="$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$TMP/$name.pgbench")"
    per_transaction "$out" "$txs" "$name"
}

cat >"$TMP/capgate.toml" <<CONF
site = "bench"
listen = "127.0.0.1:$CGPORT"
max_connections = 200
${CAPGATE_WORKERS:+workers = $CAPGATE_WORKERS}
[primary]
url = "postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable"
CONF
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.capgate.%p" \
    "$CAPGATE_BIN" run --config "$TMP/capgate.toml" >"$TMP/capgate.log" 2>&1 &
CAPGATE_PID=$!
CTL=(callgrind_control)
count capgate "$CGPORT" "$CAPGATE_PID" "$TMP/cg.capgate.$CAPGATE_PID"
kill -TERM "$CAPGATE_PID" 2>/dev/null || true
wait "$CAPGATE_PID" 2>/dev/null || true
CAPGATE_PID=

cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$PGPORT dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PBPORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = session
default_pool_size = $(( CLIENTS + 10 ))
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
EOF
echo '"postgres" ""' >"$TMP/userlist.txt"
chown postgres: "$TMP/pgbouncer.ini" "$TMP/userlist.txt"
runuser -u postgres -- valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.pgbouncer.%p" \
    pgbouncer "$TMP/pgbouncer.ini" >"$TMP/pgbouncer.out" 2>&1 &
sleep 2
PB_PID="$(pgrep -u postgres -n -f "pgbouncer $TMP/pgbouncer.ini" || true)"
[[ -n "$PB_PID" ]] || die "pgbouncer under valgrind did not start"
PIDS+=("$PB_PID")
CTL=(runuser -u postgres -- callgrind_control)
count pgbouncer "$PBPORT" "$PB_PID" "$TMP/cg.pgbouncer.$PB_PID"

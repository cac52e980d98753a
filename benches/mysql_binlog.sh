#!/usr/bin/env bash
# benches/mysql_binlog.sh — what capturing async tables from the binary log would cost
# (decision 0042, issue 15): the primary's CPU per sysbench transaction with the binary log
# off, on in ROW format, and with one remote reader attached; the reader's own CPU, either
# only receiving the events or decoding every row into capgate's JSON images; and the whole
# path emulated end to end (`relay`, `emul` below) without building it.
#
# What it does
#   * starts two throwaway MariaDB servers with benches/mysql_async.sh's settings (buffer pool
#     256 MB, innodb_flush_log_at_trx_commit=2), each in a session of its own: `off` without a
#     binary log, `bin` with log_bin, binlog_format=ROW, binlog_row_image=FULL,
#     binlog_row_metadata=FULL (column names, ENUM/SET strings, charsets: what a decoder needs);
#     `sysbench oltp_write_only prepare` on each; with `emul`, a third (`rep`, the native
#     replica); with `relay` or `emul`, capgate (no policy: every table local) in front of
#     `bin`, in a session of its own;
#   * each round runs sysbench oltp_write_only once per configuration, the order rotating by
#     round so that no configuration always goes first:
#       off     the server without a binary log
#       row0    the binary log, sync_binlog=0
#       row1    the binary log, sync_binlog=1
#       raw     row0 and benches/binlog_reader in `raw` mode attached (mysql_async's binlog
#               stream from the log's current end; events received and counted, not decoded):
#               what the dump thread costs the primary
#       decode  row0 and the reader in `decode` mode: every rows event decoded with mysql_common
#               into column values and built into the JSON row images capgate's apply takes,
#               held per transaction until its XID: what capture from the log would cost capgate
#       relay   row0 through capgate with every table local (the relay alone: no triggers)
#       emul    the binlog path emulated end to end, without building it: sysbench through
#               capgate with every table local (the relay alone: no triggers) to the `bin`
#               server (sync_binlog=0), the reader decoding, and a third MariaDB as a native
#               replica (GTID-less, slave_exec_mode=IDEMPOTENT, its own sbtest) applying the
#               row events in its SQL thread in place of capgate's apply; the primary then
#               also serves two dump threads. What it leaves out: capgate building and
#               sending the apply text (~25–35 µs per transaction today) and the difference
#               between capgate's apply and the native one on the replica
#   * a reader runs in a session of its own; after sysbench stops the script waits until the
#     reader has seen every transaction sysbench committed (its status file), and counts the
#     primary's and the reader's CPU up to that point;
#   * between runs the binary logs are rotated and purged (disk stays small).
#
# How to read the output
#   Per configuration, medians over the rounds: TPS, the primary's CPU µs per transaction (from
#   /proc), sysbench's own (from time(1): the client side, the same in every configuration),
#   the reader's CPU µs per transaction (raw, decode), the binary log bytes per
#   transaction the reader received, the catch-up time after sysbench stopped, and the load
#   average at each run. The difference row0 − off is what writing the log costs, raw − row0
#   what a dump thread costs, decode's reader CPU is capgate's decode side; relay's and emul's
#   capgate CPU and emul's replica CPU (to the end of its catch-up) per transaction as well.
#   Compare emul's ratio to off with benches/mysql_async.sh's (today's triggers and shipper) in
#   the same sitting. sysbench, the servers, capgate and the reader share the machine's cores.
#   Every run is written as JSON to $OUT.
#
# Usage
#   benches/mysql_binlog.sh [--quick]       (--quick: ROUNDS=1 DURATION=5)
#   Environment: ROUNDS=3 DURATION=10 THREADS=16 TABLES=4 TABLE_SIZE=10000
#     CONFIGS="off row0 row1 raw decode" (any subset of those, relay and emul, in the order
#       given before rotation; relay and emul need CAPGATE_BIN, default
#       target/release/capgate, built if missing)
#     READER_BIN=target/binlog_reader/release/binlog_reader (built from benches/binlog_reader
#       with cargo build --release if missing; it needs mysql_async's `binlog` feature, which
#       capgate does not enable, hence a crate of its own)
#     OUT=target/bench/mysql_binlog.json KEEP_TMP=1 (keep logs)
# Exit status: 0 when every run succeeded, 1 otherwise, 2 on setup errors.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "--quick" ]]; then
    ROUNDS=1 DURATION=5
    shift
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--quick]   (options are environment variables, see header)" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
THREADS="${THREADS:-16}"
TABLES="${TABLES:-4}"
TABLE_SIZE="${TABLE_SIZE:-10000}"
read -r -a CONFIGS <<<"${CONFIGS:-off row0 row1 raw decode}"
OUT="${OUT:-$REPO_ROOT/target/bench/mysql_binlog.json}"
KEEP_TMP="${KEEP_TMP:-0}"
READER_BIN="${READER_BIN:-$REPO_ROOT/target/binlog_reader/release/binlog_reader}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"

log() { printf '[mysql_binlog.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
# shellcheck source=benches/mylib.sh
. "$REPO_ROOT/benches/mylib.sh"
for tool in sysbench mariadbd mariadb-install-db mariadb python3 cargo /usr/bin/time; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
for c in "${CONFIGS[@]}"; do
    [[ " off row0 row1 raw decode relay emul " == *" $c "* ]] || die "unknown configuration $c"
done
EMUL=0 RELAY=0
[[ " ${CONFIGS[*]} " != *" emul "* ]] || EMUL=1
[[ " ${CONFIGS[*]} " != *" relay "* && "$EMUL" == 0 ]] || RELAY=1

TMP=""
OFF_PID=""
BIN_PID=""
REP_PID=""
CAPGATE_PID=""
READER_PID=""
stop_reader() {
    [[ -n "$READER_PID" ]] || return 0
    kill -TERM "$READER_PID" 2>/dev/null
    wait "$READER_PID" 2>/dev/null || true
    READER_PID=""
}
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_reader
    CAPGATE_PID="" MARIADB_PID=$OFF_PID stop_capgate_and_mariadb
    MARIADB_PID=$BIN_PID stop_capgate_and_mariadb
    CAPGATE_PID="" MARIADB_PID=$REP_PID stop_capgate_and_mariadb
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM
TMP="$(mktemp -d /tmp/capgate-mybinlog.XXXXXX)"

if [[ ! -x "$READER_BIN" ]]; then
    log "building benches/binlog_reader (release)"
    cargo build --release --quiet --manifest-path "$REPO_ROOT/benches/binlog_reader/Cargo.toml" \
        --target-dir "$REPO_ROOT/target/binlog_reader" || die "building the binlog reader failed"
fi

[[ "$RELAY" == 0 ]] || ensure_capgate_bin
read -r OFFPORT BINPORT REPPORT CGPORT <<<"$(free_ports 4)"
MYOPTS=(--innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --max-connections=500 --innodb-log-file-size=256M)
log "MariaDB without a binary log on port $OFFPORT, with one on port $BINPORT"
MARIADB_DIR="$TMP/off" start_mariadb "$OFFPORT" "${MYOPTS[@]}"
OFF_PID=$MARIADB_PID
MARIADB_DIR="$TMP/bin" start_mariadb "$BINPORT" "${MYOPTS[@]}" --server-id=1 --log-bin="$TMP/bin/binlog" \
    --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL --sync-binlog=0
BIN_PID=$MARIADB_PID
if [[ "$EMUL" == 1 ]]; then
    log "the native replica on port $REPPORT"
    MARIADB_DIR="$TMP/rep" start_mariadb "$REPPORT" "${MYOPTS[@]}" --server-id=2 --slave-exec-mode=IDEMPOTENT
    REP_PID=$MARIADB_PID
fi
MARIADB_PID=""

my() { local port=$1; shift; mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$port" -ucapgate -N -B "$@"; }
sb() {
    local port=$1; shift
    sysbench oltp_write_only --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" --mysql-user=capgate \
        --mysql-db=sbtest --mysql-ssl=off --tables="$TABLES" --table-size="$TABLE_SIZE" "$@"
}
log "sysbench prepare ($TABLES tables x $TABLE_SIZE rows) on each server"
for port in "$OFFPORT" "$BINPORT" ${REP_PID:+"$REPPORT"}; do
    sb "$port" prepare >"$TMP/prepare.log" 2>&1 || { tail "$TMP/prepare.log" >&2; die "prepare failed"; }
done
my "$BINPORT" -e "FLUSH BINARY LOGS; PURGE BINARY LOGS BEFORE NOW()"
if [[ "$RELAY" == 1 ]]; then
    : "capgate in front of the bin server, no policy: every table local, no trigger, no replica"
    start_capgate_mysql "$CGPORT" "$BINPORT"
fi

TICK_US=$((1000000 / $(getconf CLK_TCK)))
FAILED=0
RUNS="$TMP/runs.tsv"
: >"$RUNS"
# The reader's status line: transactions events bytes rows (0 0 0 0 before its first write).
status() { cat "$TMP/reader.status" 2>/dev/null || echo "0 0 0 0"; }

run() {
    local round=$1 config=$2 port=$BINPORT pid=$BIN_PID mode="" pbefore rbefore=0 before after tx tps catchup=0 t0
    case "$config" in
        off) port=$OFFPORT pid=$OFF_PID ;;
        row1) my "$BINPORT" -e "SET GLOBAL sync_binlog = 1" ;;
        raw) mode=raw ;;
        decode) mode=decode ;;
        emul) mode=decode ;;
    esac
    local sbport=$port rbefore_rep=0 cbefore=0
    if [[ "$config" == relay ]]; then
        sbport=$CGPORT; cbefore=$(cpu_ticks "$CAPGATE_PID")
    fi
    if [[ "$config" == emul ]]; then
        sbport=$CGPORT
        : "the native replica starts at the log's current end"
        read -r mfile mpos <<<"$(my "$BINPORT" -e "SHOW MASTER STATUS" | cut -f1,2)"
        my "$REPPORT" -e "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$BINPORT, MASTER_USER='capgate', \
            MASTER_USE_GTID=no, MASTER_LOG_FILE='$mfile', MASTER_LOG_POS=$mpos; START SLAVE"
        rbefore_rep=$(cpu_ticks "$REP_PID"); cbefore=$(cpu_ticks "$CAPGATE_PID")
    fi
    [[ "$config" == row1 ]] || my "$BINPORT" -e "SET GLOBAL sync_binlog = 0"
    rm -f "$TMP/reader.status"
    if [[ -n "$mode" ]]; then
        setsid "$READER_BIN" "mysql://capgate@127.0.0.1:$BINPORT/" "$mode" "$TMP/reader.status" >"$TMP/reader.log" 2>&1 &
        READER_PID=$!
        own_session "$READER_PID" binlog_reader
        for _ in $(seq 100); do [[ -s "$TMP/reader.status" ]] && break; sleep 0.05; done
        [[ -s "$TMP/reader.status" ]] || { cat "$TMP/reader.log" >&2; die "the binlog reader did not start"; }
        rbefore=$(cpu_ticks "$READER_PID")
    fi
    read -r before _ <<<"$(status)"
    pbefore=$(cpu_ticks "$pid")
    local load; load=$(cut -d' ' -f1 /proc/loadavg)
    if ! /usr/bin/time -f '%U %S' -o "$TMP/sysbench.time" \
        sysbench oltp_write_only --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$sbport" --mysql-user=capgate \
        --mysql-db=sbtest --mysql-ssl=off --tables="$TABLES" --table-size="$TABLE_SIZE" \
        --threads="$THREADS" --time="$DURATION" --report-interval=0 run >"$TMP/run.log" 2>&1; then
        FAILED=1; tail -20 "$TMP/run.log" >&2; stop_reader; return 0
    fi
    tps=$(awk '/transactions:/ { gsub(/[()]/, "", $3); print $3 }' "$TMP/run.log")
    tx=$(awk '/transactions:/ { print $2 }' "$TMP/run.log")
    local bytes=0 rows=0 rticks=0
    if [[ -n "$mode" ]]; then
        : "wait until the reader has seen every transaction sysbench committed"
        t0=$(date +%s.%N)
        for _ in $(seq 1200); do
            read -r after _ <<<"$(status)"
            (( after - before >= tx )) && break
            kill -0 "$READER_PID" 2>/dev/null || break
            sleep 0.05
        done
        read -r after _ bytes rows <<<"$(status)"
        (( after - before >= tx )) || { FAILED=1; log "$config: the reader saw $((after - before)) of $tx transactions"; cat "$TMP/reader.log" >&2; }
        catchup=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$t0" "$(date +%s.%N)")
        rticks=$(( $(cpu_ticks "$READER_PID") - rbefore ))
    fi
    local cticks=0 repticks=0
    [[ "$config" != relay ]] || cticks=$(( $(cpu_ticks "$CAPGATE_PID") - cbefore ))
    if [[ "$config" == emul ]]; then
        cticks=$(( $(cpu_ticks "$CAPGATE_PID") - cbefore ))
        : "wait until the native replica has applied everything, then stop it"
        read -r mfile mpos <<<"$(my "$BINPORT" -e "SHOW MASTER STATUS" | cut -f1,2)"
        [[ "$(my "$REPPORT" -e "SELECT MASTER_POS_WAIT('$mfile', $mpos, 120)")" -ge 0 ]] 2>/dev/null \
            || { FAILED=1; log "emul: the native replica did not catch up"; my "$REPPORT" -e "SHOW SLAVE STATUS\G" | grep -i error >&2; }
        repticks=$(( $(cpu_ticks "$REP_PID") - rbefore_rep ))
        my "$REPPORT" -e "STOP SLAVE"
    fi
    local pticks=$(( $(cpu_ticks "$pid") - pbefore ))
    stop_reader
    local sbus; sbus=$(awk -v tx="$tx" '{ printf "%d", ($1 + $2) * 1e6 / (tx > 0 ? tx : 1) }' "$TMP/sysbench.time")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$config" "$tps" "$tx" "$((pticks * TICK_US / (tx > 0 ? tx : 1)))" \
        "$((rticks * TICK_US / (tx > 0 ? tx : 1)))" "$((bytes / (tx > 0 ? tx : 1)))" "$((rows / (tx > 0 ? tx : 1)))" "$catchup" "$load" \
        "$sbus" "$((cticks * TICK_US / (tx > 0 ? tx : 1)))" "$((repticks * TICK_US / (tx > 0 ? tx : 1)))" >>"$RUNS"
    [[ "$port" == "$OFFPORT" ]] || my "$BINPORT" -e "FLUSH BINARY LOGS; PURGE BINARY LOGS BEFORE NOW()"
}

for round in $(seq "$ROUNDS"); do
    n=${#CONFIGS[@]}
    for i in $(seq 0 $((n - 1))); do
        run "$round" "${CONFIGS[$(( (i + round - 1) % n ))]}"
    done
    log "round $round: $(grep -P "^$round\t" "$RUNS" | awk -F'\t' '{ printf "%s=%s tps %s us ", $2, $3, $5 }')"
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RUNS" "$THREADS" "$DURATION" "$OUT" <<'PY'
import json, statistics, sys
runs, threads, duration, out = sys.argv[1:]
rows = [l.split("\t") for l in open(runs).read().splitlines() if l]
configs = []
for r in rows:
    if r[1] not in configs:
        configs.append(r[1])
med = lambda v: statistics.median(v) if v else None
result = {"workload": "oltp_write_only", "threads": int(threads), "duration_s": int(duration), "configs": {}}
for c in configs:
    rs = [r for r in rows if r[1] == c]
    result["configs"][c] = {
        "tps": [float(r[2]) for r in rs],
        "median_tps": med([float(r[2]) for r in rs]),
        "primary_cpu_us_per_tx": [int(r[4]) for r in rs],
        "median_primary_cpu_us_per_tx": med([int(r[4]) for r in rs]),
        "reader_cpu_us_per_tx": [int(r[5]) for r in rs],
        "binlog_bytes_per_tx": med([int(r[6]) for r in rs]),
        "rows_per_tx": med([int(r[7]) for r in rs]),
        "catchup_s": [float(r[8]) for r in rs],
        "load": [float(r[9]) for r in rs],
        "sysbench_cpu_us_per_tx": [int(r[10]) for r in rs],
        "capgate_cpu_us_per_tx": [int(r[11]) for r in rs],
        "replica_cpu_us_per_tx": [int(r[12]) for r in rs],
    }
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result, indent=2))
PY
exit "$FAILED"

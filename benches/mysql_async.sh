#!/usr/bin/env bash
# benches/mysql_async.sh — sysbench oltp_write_only through capgate with every table `async`
# (shipped to a second MariaDB) next to the same workload sent to the primary directly, in
# one run; and the replica's lag while it runs.
#
# What it does
#   * starts two throwaway MariaDB servers (primary, replica; buffer pool 256 MB,
#     innodb_flush_log_at_trx_commit=2) and `sysbench oltp_write_only prepare` twice on the
#     primary: database `sbtest` (async in the policy, copied to the replica with
#     mariadb-dump) and `sbdirect` (local: no capture trigger, the direct baseline);
#   * starts capgate (it installs the capture triggers on sbtest and ships to the replica);
#     capgate and both servers each run in a session of their own (setsid), as a service
#     manager starts them: the kernel's autogroup scheduler shares a busy CPU between sessions
#     first (decision 0037), and in this script's session they competed with sysbench as one;
#   * each round: the run on sbdirect straight to the primary and the same run on sbtest
#     through capgate, alternating which goes first;
#   * during each capgate run samples the replica's lag every 0.2 s on the primary: the age
#     of the oldest change past the replica's shipped position (`capgate.shipped.high`);
#   * after each capgate run waits until everything is shipped, and at the end compares
#     `CHECKSUM TABLE … EXTENDED` on both servers.
#
# How to read the output
#   Median TPS of each target, the ratio capgate/direct, capgate's and the primary's CPU time
#   per capgate transaction (µs, from /proc, during the run; the primary's also per direct
#   transaction: the difference is what capture costs it), the replica's (from the run's
#   start to the end of its drain: what applying costs), the lag's p50 / p99 / max over every sample, the time to drain after
#   the load stops, the replica's COMMITs per second and the changes each carried (the
#   shipper's batches, from the run's start to the end of the drain), and whether the checksums
#   are equal (the drain waits for the position's holes too). sysbench, capgate and both servers
#   share the machine's cores. Every run is written as JSON to $OUT.
#
# Usage
#   benches/mysql_async.sh [--quick]       (--quick: ROUNDS=1 DURATION=5)
#   Environment: ROUNDS=3 DURATION=10 THREADS=16 TABLES=4 TABLE_SIZE=10000
#     MODE=async (MODE=local: the same runs with sbtest local, i.e. the relay alone, to tell
#     its cost from capture's and shipping's; the checksums are then not compared)
#     RATE=0 (sysbench --rate: that many transactions a second at most, for both targets; 0:
#     as fast as they go — with a rate the ratio says nothing, the CPU per transaction does)
#     SHIP_INTERVAL=200ms (the replica's ship_interval; unset: capgate's default)
#     CAPGATE_BIN=target/release/capgate (built with cargo build --release if missing)
#     OUT=target/bench/mysql_async.json KEEP_TMP=1 (keep logs)
#     PERF=dir: `perf record -g` capgate and both mariadbds during each capgate run,
#     written to dir/capgate-<round>.data, dir/primary-<round>.data, dir/replica-<round>.data
# Exit status: 0 when every run succeeded and the checksums are equal, 1 otherwise, 2 on
# setup errors.
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
MODE="${MODE:-async}"
RATE="${RATE:-0}"
[[ "$MODE" == async || "$MODE" == local ]] || die "MODE must be async or local"
OUT="${OUT:-$REPO_ROOT/target/bench/mysql_async.json}"
KEEP_TMP="${KEEP_TMP:-0}"
PERF="${PERF:-}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"

log() { printf '[mysql_async.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
# shellcheck source=benches/mylib.sh
. "$REPO_ROOT/benches/mylib.sh"
for tool in sysbench mariadbd mariadb-install-db mariadb mariadb-dump python3; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

TMP=""
CAPGATE_PID=""
PRIMARY_PID=""
REPLICA_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    MARIADB_PID=$PRIMARY_PID stop_capgate_and_mariadb
    CAPGATE_PID="" MARIADB_PID=$REPLICA_PID stop_capgate_and_mariadb
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM
TMP="$(mktemp -d /tmp/capgate-myasync.XXXXXX)"

ensure_capgate_bin
read -r PPORT RPORT CGPORT <<<"$(free_ports 3)"
MYOPTS=(--innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --max-connections=500 --innodb-log-file-size=256M)
log "MariaDB primary on port $PPORT, replica on port $RPORT"
MARIADB_DIR="$TMP/primary" start_mariadb "$PPORT" "${MYOPTS[@]}"
PRIMARY_PID=$MARIADB_PID
MARIADB_DIR="$TMP/replica" start_mariadb "$RPORT" "${MYOPTS[@]}"
REPLICA_PID=$MARIADB_PID
MARIADB_PID=""

my() { local port=$1; shift; mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$port" -ucapgate -N -B "$@"; }
sb() {
    local port=$1 db=$2; shift 2
    sysbench oltp_write_only --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" --mysql-user=capgate \
        --mysql-db="$db" --mysql-ssl=off --tables="$TABLES" --table-size="$TABLE_SIZE" --rate="$RATE" "$@"
}
log "sysbench prepare ($TABLES tables x $TABLE_SIZE rows) in sbtest (copied to the replica) and sbdirect"
my "$PPORT" -e "CREATE DATABASE sbdirect"
for db in sbtest sbdirect; do
    sb "$PPORT" "$db" prepare >"$TMP/prepare.log" 2>&1 || { tail "$TMP/prepare.log" >&2; die "prepare failed"; }
done
mariadb-dump --no-defaults --protocol=TCP -h127.0.0.1 -P"$PPORT" -ucapgate --skip-triggers sbtest | my "$RPORT" sbtest \
    || die "copying sbtest to the replica failed"

printf 'default = "local"\n[[table]]\nmatch = "sbtest.*"\nmode = "%s"\n' "$MODE" >"$TMP/policy.toml"
cat >"$TMP/capgate.toml" <<CONF
site = "bench"
listen = "127.0.0.1:$CGPORT"
max_connections = 2000
policy = "$TMP/policy.toml"
[primary]
url = "mysql://capgate@127.0.0.1:$PPORT/?sslmode=disable"
[[replicas]]
name = "east"
url = "mysql://capgate@127.0.0.1:$RPORT/?sslmode=disable"
CONF
[[ -z "${SHIP_INTERVAL:-}" ]] || printf 'ship_interval = "%s"\n' "$SHIP_INTERVAL" >>"$TMP/capgate.toml"

# Lag samples (µs) on the primary: the oldest change past the replica's shipped position.
LAG_SQL="SELECT COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(c.at), UTC_TIMESTAMP(6)), 0) FROM capgate.changes c \
JOIN capgate.shipped s ON s.replica = 'east' AND c.seq > s.high"
# Pending: past the shipped position, or one of its holes (a number a transaction held while
# the shipper read past it, committed since).
PENDING_SQL="SELECT COUNT(*) FROM capgate.changes c JOIN capgate.shipped s ON s.replica = 'east' AND (c.seq > s.high \
OR c.seq IN (SELECT h.seq FROM JSON_TABLE(s.holes, '\$[*]' COLUMNS (seq BIGINT UNSIGNED PATH '\$[0]')) h))"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
FAILED=0
RUNS="$TMP/runs.tsv"
LAGS="$TMP/lag.txt"
DRAINS="$TMP/drain.txt"
REPLICA_CPU="$TMP/replica_cpu.txt"
BATCHES="$TMP/batches.txt"
: >"$RUNS"; : >"$LAGS"; : >"$DRAINS"; : >"$REPLICA_CPU"; : >"$BATCHES"
# The replica's COMMITs (the shipper's batches: nothing else writes there) and the primary's
# last change number.
COMMITS_SQL="SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'COM_COMMIT'"
SEQ_SQL="SELECT COALESCE(MAX(seq), 0) FROM capgate.changes"
run_direct() {
    local pbefore tx
    pbefore=$(cpu_ticks "$PRIMARY_PID")
    if sb "$PPORT" sbdirect --threads="$THREADS" --time="$DURATION" --report-interval=0 run >"$TMP/run.log" 2>&1; then
        tx=$(awk '/transactions:/ { print $2 }' "$TMP/run.log")
        printf '%s\tdirect\t%s\t0\t%s\n' "$1" "$(awk '/transactions:/ { gsub(/[()]/, "", $3); print $3 }' "$TMP/run.log")" \
            "$(( ($(cpu_ticks "$PRIMARY_PID") - pbefore) * TICK_US / (tx > 0 ? tx : 1) ))" >>"$RUNS"
    else
        FAILED=1; tail -20 "$TMP/run.log" >&2
    fi
}
run_capgate() {
    local before after tx tps sampler start rbefore pbefore pafter cbefore sbefore began
    : "sampling the lag (async only: local tables have no shipped position)"
    ( [[ "$MODE" == async ]] || exit 0; while true; do my "$PPORT" -e "$LAG_SQL" 2>/dev/null >>"$LAGS" || true; sleep 0.2; done ) &
    sampler=$!
    if [[ "$MODE" == async ]]; then cbefore=$(my "$RPORT" -e "$COMMITS_SQL"); sbefore=$(my "$PPORT" -e "$SEQ_SQL"); fi
    began=$(date +%s.%N)
    before=$(cpu_ticks "$CAPGATE_PID"); rbefore=$(cpu_ticks "$REPLICA_PID"); pbefore=$(cpu_ticks "$PRIMARY_PID")
    tx=0
    local perfs=()
    if [[ -n "$PERF" ]]; then
        mkdir -p "$PERF"
        perf record --call-graph dwarf,16384 -F 499 -q -o "$PERF/capgate-$1.data" -p "$CAPGATE_PID" -- sleep "$DURATION" >/dev/null 2>&1 & perfs+=($!)
        perf record -g -q -o "$PERF/primary-$1.data" -p "$PRIMARY_PID" -- sleep "$DURATION" >/dev/null 2>&1 & perfs+=($!)
        perf record -g -q -o "$PERF/replica-$1.data" -p "$REPLICA_PID" -- sleep "$DURATION" >/dev/null 2>&1 & perfs+=($!)
    fi
    if sb "$CGPORT" sbtest --threads="$THREADS" --time="$DURATION" --report-interval=0 run >"$TMP/run.log" 2>&1; then
        after=$(cpu_ticks "$CAPGATE_PID"); pafter=$(cpu_ticks "$PRIMARY_PID")
        tps=$(awk '/transactions:/ { gsub(/[()]/, "", $3); print $3 }' "$TMP/run.log")
        tx=$(awk '/transactions:/ { print $2 }' "$TMP/run.log")
        printf '%s\tcapgate\t%s\t%s\t%s\n' "$1" "$tps" "$(( (after - before) * TICK_US / (tx > 0 ? tx : 1) ))" \
            "$(( (pafter - pbefore) * TICK_US / (tx > 0 ? tx : 1) ))" >>"$RUNS"
    else
        FAILED=1; tail -20 "$TMP/run.log" >&2
    fi
    kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
    [[ ${#perfs[@]} -eq 0 ]] || wait "${perfs[@]}" 2>/dev/null || true
    [[ "$MODE" == async ]] || return 0
    start=$(date +%s.%N)
    for _ in $(seq 1200); do
        [[ "$(my "$PPORT" -e "$PENDING_SQL")" == 0 ]] && break
        sleep 0.1
    done
    [[ "$(my "$PPORT" -e "$PENDING_SQL")" == 0 ]] || { FAILED=1; log "the replica did not catch up within 120 s"; }
    python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)" >>"$DRAINS"
    : "the replica's CPU from the run's start to the end of the drain: what applying a transaction costs it"
    echo "$(( ($(cpu_ticks "$REPLICA_PID") - rbefore) * TICK_US / (tx > 0 ? tx : 1) ))" >>"$REPLICA_CPU"
    : "the replica's commits (batches) and the changes they carried, from the run's start to the end of the drain"
    echo "$(( $(my "$RPORT" -e "$COMMITS_SQL") - cbefore )) $(( $(my "$PPORT" -e "$SEQ_SQL") - sbefore )) $began $(date +%s.%N)" >>"$BATCHES"
}
log "capgate on port $CGPORT ($CAPGATE_BIN)"
# In a session of its own, as both servers (benches/mylib.sh start_mariadb).
setsid "$CAPGATE_BIN" run --config "$TMP/capgate.toml" >"$TMP/capgate.log" 2>&1 &
CAPGATE_PID=$!
own_session "$CAPGATE_PID" capgate
for _ in $(seq 300); do
    my "$CGPORT" -e 'select 1' >/dev/null 2>&1 && break
    kill -0 "$CAPGATE_PID" 2>/dev/null || { tail -30 "$TMP/capgate.log" >&2; die "capgate exited"; }
    sleep 0.1
done
for round in $(seq "$ROUNDS"); do
    if (( round % 2 )); then run_direct "$round"; run_capgate "$round"; else run_capgate "$round"; run_direct "$round"; fi
    log "round $round: $(grep -P "^$round\t" "$RUNS" | cut -f2,3 | tr '\t\n' '= ' )"
done
SUMS_EQUAL=false
CHECKSUM="CHECKSUM TABLE $(seq -s, -f 'sbtest.sbtest%g' "$TABLES") EXTENDED"
if [[ "$MODE" == async ]]; then
    [[ "$(my "$PPORT" -e "$CHECKSUM")" == "$(my "$RPORT" -e "$CHECKSUM")" ]] && SUMS_EQUAL=true || FAILED=1
    if [[ "$SUMS_EQUAL" == false ]]; then
        : "diagnostic only (the run has failed): whether the replica converges later"
        for i in $(seq 50); do
            sleep 0.2
            [[ "$(my "$PPORT" -e "$CHECKSUM")" == "$(my "$RPORT" -e "$CHECKSUM")" ]] && { log "checksums differed after the drain, equal $((i * 200)) ms later"; break; }
        done
    fi
fi

mkdir -p "$(dirname "$OUT")"
python3 - "$RUNS" "$LAGS" "$DRAINS" "$SUMS_EQUAL" "$THREADS" "$DURATION" "$OUT" "$MODE" "$REPLICA_CPU" "$BATCHES" <<'PY'
import json, statistics, sys
runs, lags, drains, equal, threads, duration, out, mode, replica_cpu, batches = sys.argv[1:]
rounds = [l.split() for l in open(batches).read().splitlines() if l]
commits = [(int(c), int(n), float(e) - float(b)) for c, n, b, e in rounds]
rows = [l.split("\t") for l in open(runs).read().splitlines() if l]
tps = {t: [float(r[2]) for r in rows if r[1] == t] for t in ("direct", "capgate")}
cpu = [int(r[3]) for r in rows if r[1] == "capgate"]
primary_cpu = [int(r[4]) for r in rows if r[1] == "capgate"]
direct_primary_cpu = [int(r[4]) for r in rows if r[1] == "direct"]
rcpu = [int(x) for x in open(replica_cpu).read().split()]
lag = sorted(int(x) / 1e6 for x in open(lags).read().split() if x.strip().isdigit())
pct = lambda p: lag[min(len(lag) - 1, int(p * len(lag)))] if lag else None
med = {t: statistics.median(v) if v else None for t, v in tps.items()}
result = {
    "workload": "oltp_write_only", "mode": mode, "threads": int(threads), "duration_s": int(duration),
    "tps": tps, "median_tps": med,
    "ratio_capgate_direct": (med["capgate"] / med["direct"]) if med["direct"] and med["capgate"] else None,
    "capgate_cpu_us_per_tx": statistics.median(cpu) if cpu else None,
    "primary_cpu_us_per_tx": statistics.median(primary_cpu) if primary_cpu else None,
    "primary_cpu_us_per_tx_direct": statistics.median(direct_primary_cpu) if direct_primary_cpu else None,
    "replica_cpu_us_per_tx": statistics.median(rcpu) if rcpu else None,
    "replica_commits_per_s": statistics.median(c / s for c, _, s in commits) if commits else None,
    "changes_per_commit": statistics.median(n / max(c, 1) for c, n, _ in commits) if commits else None,
    "lag_s": {"samples": len(lag), "p50": pct(0.5), "p99": pct(0.99), "max": lag[-1] if lag else None},
    "drain_s": [float(x) for x in open(drains).read().split()],
    "checksums_equal": equal == "true",
}
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result, indent=2))
PY
exit "$FAILED"

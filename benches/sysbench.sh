#!/usr/bin/env bash
# benches/sysbench.sh — capgate's MySQL front end vs a direct connection to MariaDB, measured
# side by side in one run with sysbench.
#
# What it does
#   * starts a throwaway MariaDB (own temp dir, free loopback port, buffer pool 256 MB,
#     innodb_flush_log_at_trx_commit=2 so read/write is CPU-bound and the relay's cost is
#     visible) and `sysbench oltp_read_write prepare` ($TABLES tables of $TABLE_SIZE rows);
#   * starts capgate (`capgate run`) in front of it;
#   * for each round and workload (oltp_point_select, oltp_read_write; server-side prepared
#     statements, sysbench's default), runs sysbench for $DURATION s with $THREADS threads
#     against direct and capgate, alternating which goes first each round;
#   * reads capgate's CPU time (utime + stime from /proc/PID/stat) before and after each
#     capgate run.
#
# How to read the output
#   One row per workload: median TPS of each target over the rounds, the ratio cg/direct
#   (1.000 = no overhead), and capgate's CPU time per transaction in µs (its own relay cost,
#   steadier than TPS on a noisy machine). sysbench, capgate and MariaDB share the machine's
#   cores, so the ratio includes CPU contention. Every run is written as JSON to $OUT.
#
# Usage
#   benches/sysbench.sh [--quick]       (--quick: ROUNDS=1 DURATION=3)
#   Environment: ROUNDS=3 DURATION=10 THREADS=8 TABLES=4 TABLE_SIZE=10000
#     WORKLOADS="oltp_point_select oltp_read_write" PS_MODE=auto
#     CAPGATE_BIN=target/release/capgate (built with cargo build --release if missing)
#     OUT=target/bench/sysbench.json KEEP_TMP=1 (keep logs)
# Exit status: 0 when every run succeeded, 1 if one failed, 2 on setup errors.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "--quick" ]]; then
    ROUNDS=1 DURATION=3
    shift
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--quick]   (options are environment variables, see header)" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
THREADS="${THREADS:-8}"
TABLES="${TABLES:-4}"
TABLE_SIZE="${TABLE_SIZE:-10000}"
WORKLOADS="${WORKLOADS:-oltp_point_select oltp_read_write}"
PS_MODE="${PS_MODE:-auto}"
OUT="${OUT:-$REPO_ROOT/target/bench/sysbench.json}"
KEEP_TMP="${KEEP_TMP:-0}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"

log() { printf '[sysbench.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
# shellcheck source=benches/mylib.sh
. "$REPO_ROOT/benches/mylib.sh"
for tool in sysbench mariadbd mariadb-install-db mariadb python3; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

TMP=""
CAPGATE_PID=""
MARIADB_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_capgate_and_mariadb
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM
TMP="$(mktemp -d /tmp/capgate-sysbench.XXXXXX)"

ensure_capgate_bin
read -r MYPORT CGPORT <<<"$(free_ports 2)"
log "MariaDB on port $MYPORT"
start_mariadb "$MYPORT" --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --max-connections=500 \
    --innodb-log-file-size=256M
start_capgate_mysql "$CGPORT" "$MYPORT"

sb() {
    local port=$1 workload=$2; shift 2
    sysbench "$workload" --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" --mysql-user=capgate \
        --mysql-db=sbtest --mysql-ssl=off --tables="$TABLES" --table-size="$TABLE_SIZE" "$@"
}
log "sysbench prepare ($TABLES tables x $TABLE_SIZE rows)"
sb "$MYPORT" oltp_read_write prepare >"$TMP/prepare.log" 2>&1 || { tail "$TMP/prepare.log" >&2; die "prepare failed"; }

TICK_US=$((1000000 / $(getconf CLK_TCK)))
FAILED=0
RUNS="$TMP/runs.tsv"
: >"$RUNS"
for round in $(seq "$ROUNDS"); do
    for workload in $WORKLOADS; do
        if (( round % 2 )); then order="direct capgate"; else order="capgate direct"; fi
        for target in $order; do
            port=$MYPORT
            [[ $target == capgate ]] && port=$CGPORT
            before=$(cpu_ticks "$CAPGATE_PID")
            if sb "$port" "$workload" --threads="$THREADS" --time="$DURATION" --report-interval=0 --db-ps-mode="$PS_MODE" run \
                >"$TMP/run.log" 2>&1; then
                after=$(cpu_ticks "$CAPGATE_PID")
                tps=$(awk '/transactions:/ { gsub(/[()]/, "", $3); print $3 }' "$TMP/run.log")
                tx=$(awk '/transactions:/ { print $2 }' "$TMP/run.log")
                cpu_us=$(( (after - before) * TICK_US ))
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$workload" "$target" "$tps" "$tx" "$cpu_us" >>"$RUNS"
                log "round $round $workload $target: $tps tps"
            else
                FAILED=1
                tail -20 "$TMP/run.log" >&2
                printf '%s\t%s\t%s\tFAIL\t0\t0\n' "$round" "$workload" "$target" >>"$RUNS"
            fi
        done
    done
done

python3 - "$RUNS" "$OUT" "$THREADS" "$DURATION" "$ROUNDS" <<'PY'
import json, statistics, sys, os
runs_file, out, threads, duration, rounds = sys.argv[1:]
runs = []
for line in open(runs_file):
    r, w, t, tps, tx, cpu = line.rstrip("\n").split("\t")
    runs.append({"round": int(r), "workload": w, "target": t, "tps": None if tps == "FAIL" else float(tps),
                 "transactions": int(tx), "capgate_cpu_us": int(cpu)})
summary = []
print(f"sysbench, {threads} threads, {duration} s per run, median of {rounds} round(s)")
print(f"{'workload':<20} {'direct tps':>11} {'capgate tps':>12} {'cg/direct':>10} {'cg CPU µs/tx':>13}")
for w in dict.fromkeys(r["workload"] for r in runs):
    def med(target):
        v = [r["tps"] for r in runs if r["workload"] == w and r["target"] == target and r["tps"] is not None]
        return statistics.median(v) if v else None
    cg = [r for r in runs if r["workload"] == w and r["target"] == "capgate" and r["tps"] is not None]
    us = statistics.median(r["capgate_cpu_us"] / r["transactions"] for r in cg) if cg else None
    d, c = med("direct"), med("capgate")
    ratio = c / d if c and d else None
    summary.append({"workload": w, "direct_tps": d, "capgate_tps": c, "ratio": ratio, "capgate_cpu_us_per_tx": us})
    fmt = lambda x, f: f.format(x) if x is not None else "FAIL"
    print(f"{w:<20} {fmt(d, '{:11.1f}'):>11} {fmt(c, '{:12.1f}'):>12} {fmt(ratio, '{:10.3f}'):>10} {fmt(us, '{:13.1f}'):>13}")
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump({"threads": int(threads), "duration_s": int(duration), "summary": summary, "runs": runs}, open(out, "w"), indent=1)
PY
exit "$FAILED"

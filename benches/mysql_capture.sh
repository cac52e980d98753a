#!/usr/bin/env bash
# benches/mysql_capture.sh — what capture costs the MySQL primary alone: sysbench
# oltp_write_only straight to one MariaDB, with capgate's capture triggers on sbtest in
# several variants (no capgate, no shipper, no replica), alternating variants each round.
#
# What it does
#   * starts a throwaway MariaDB (the settings of benches/mysql_async.sh: buffer pool 256 MB,
#     innodb_flush_log_at_trx_commit=2) and `sysbench oltp_write_only prepare` in sbtest;
#   * each round, for each variant: installs it (benches/mysql_capture_sql.py: `main` is what
#     capgate installs, the others differ in one thing each; `capgate.changes` is recreated
#     empty), runs sysbench for DURATION seconds and reads the server's CPU time from /proc;
#     a variant named `X+prune` is X with a client deleting all but the newest 2,000 rows of
#     `capgate.changes` every second during the run (the shipper's pruning, roughly).
#
# How to read the output
#   One line per run: TPS and the primary's CPU µs per transaction. Compare the variants of a
#   sitting (the machine's load changes between sittings; the load average is printed). `none`
#   against `main` is what capture costs the primary; benches/mysql_async.sh's primary figure
#   through capgate, against `main` here, is what the relay and the shipper add to it.
#
# Usage
#   benches/mysql_capture.sh
#   Environment: ROUNDS=3 DURATION=8 THREADS=16 TABLES=4 TABLE_SIZE=10000
#     VARIANTS="none main empty inline" (see `benches/mysql_capture_sql.py`; any with +prune)
#     PERF=dir: `perf record -g` the server during each run, to dir/<variant>-<round>.data
# Exit status: 0 when every run succeeded, 2 on setup errors.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -eq 0 ]] || { echo "usage: $0   (options are environment variables, see header)" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
THREADS="${THREADS:-16}"
TABLES="${TABLES:-4}"
TABLE_SIZE="${TABLE_SIZE:-10000}"
VARIANTS="${VARIANTS:-none main empty inline}"
PERF="${PERF:-}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
log() { printf '[mysql_capture.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
# shellcheck source=benches/mylib.sh
. "$REPO_ROOT/benches/mylib.sh"
for tool in sysbench mariadbd mariadb-install-db mariadb python3 bc; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

TMP=""
MARIADB_PID=""
PRUNER=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -z "$PRUNER" ]] || kill "$PRUNER" 2>/dev/null
    CAPGATE_PID="" stop_capgate_and_mariadb
    [[ -z "$TMP" || ! -d "$TMP" ]] || rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT INT TERM
TMP="$(mktemp -d /tmp/capgate-mycapture.XXXXXX)"

read -r PORT <<<"$(free_ports 1)"
start_mariadb "$PORT" --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --max-connections=500 \
    --innodb-log-file-size=256M
my() { mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$PORT" -ucapgate -N -B "$@"; }
sb() {
    sysbench oltp_write_only --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$PORT" --mysql-user=capgate \
        --mysql-db=sbtest --mysql-ssl=off --tables="$TABLES" --table-size="$TABLE_SIZE" "$@"
}
log "sysbench prepare ($TABLES tables x $TABLE_SIZE rows)"
sb prepare >"$TMP/prepare.log" 2>&1 || { tail "$TMP/prepare.log" >&2; die "prepare failed"; }
my -e "CREATE DATABASE capgate"
cpu() { awk '{print $14 + $15}' "/proc/$MARIADB_PID/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
[[ -z "$PERF" ]] || mkdir -p "$PERF"

for round in $(seq "$ROUNDS"); do
    for variant in $VARIANTS; do
        base="${variant%+prune}"
        python3 "$REPO_ROOT/benches/mysql_capture_sql.py" "$base" "$TABLES" | my || die "installing $base failed"
        if [[ "$variant" == *+prune ]]; then
            (while sleep 1; do
                my -e "SET @m = (SELECT MAX(seq) FROM capgate.changes); DELETE FROM capgate.changes WHERE seq < @m - 2000" || true
            done) >/dev/null 2>&1 &
            PRUNER=$!
        fi
        perf_pid=""
        if [[ -n "$PERF" ]]; then
            perf record -g -q -o "$PERF/$variant-$round.data" -p "$MARIADB_PID" -- sleep "$DURATION" >/dev/null 2>&1 &
            perf_pid=$!
        fi
        c0=$(cpu)
        out=$(sb run --threads="$THREADS" --time="$DURATION" 2>&1) || { echo "$out" >&2; die "sysbench failed ($variant)"; }
        c1=$(cpu)
        [[ -z "$perf_pid" ]] || wait "$perf_pid" || true
        if [[ -n "$PRUNER" ]]; then kill "$PRUNER" 2>/dev/null; wait "$PRUNER" 2>/dev/null || true; PRUNER=""; fi
        tx=$(awk '/transactions:/ {print $2}' <<<"$out")
        tps=$(awk '/transactions:/ {gsub(/\(/, "", $3); print $3}' <<<"$out")
        printf 'round %s  %-14s tps %8.1f  primary µs/tx %6.1f  load %s\n' "$round" "$variant" "$tps" \
            "$(bc -l <<<"($c1 - $c0) * $TICK_US / $tx")" "$(cut -d' ' -f1 /proc/loadavg)"
    done
done

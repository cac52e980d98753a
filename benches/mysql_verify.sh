#!/usr/bin/env bash
# benches/mysql_verify.sh — `capgate verify` on MariaDB tables next to `CHECKSUM TABLE …
# EXTENDED` (what a DBA runs by hand: one whole-table checksum per server, no rows named) on
# the same two servers, in one run.
#
# What it does
#   * starts two throwaway MariaDB servers (primary, replica; buffer pool 256 MB) and
#     `sysbench oltp_read_write prepare` on the primary (database sbtest), copied to the
#     replica with mariadb-dump;
#   * each round: `CHECKSUM TABLE … EXTENDED` on the primary then on the replica (timed
#     together), and `capgate verify` (its chunks read both servers at once), alternating
#     which goes first; verify must exit 0 (equal);
#   * at the end changes one row on the replica and requires verify to exit 1 naming it.
#
# How to read the output
#   Median seconds of each, the ratio verify/checksum, and verify's rows per second (rows of
#   the primary compared). Both servers and capgate share the machine's cores. The run is
#   written as JSON to $OUT.
#
# Usage
#   benches/mysql_verify.sh [--quick]       (--quick: ROUNDS=1 TABLE_SIZE=20000)
#   Environment: ROUNDS=3 TABLES=4 TABLE_SIZE=100000 CHUNK_ROWS=1000
#     CAPGATE_BIN=target/release/capgate (built with cargo build --release if missing)
#     OUT=target/bench/mysql_verify.json KEEP_TMP=1 (keep logs)
# Exit status: 0 when every verify answered as expected, 1 otherwise, 2 on setup errors.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "--quick" ]]; then
    ROUNDS=1 TABLE_SIZE=20000
    shift
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--quick]   (options are environment variables, see header)" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
TABLES="${TABLES:-4}"
TABLE_SIZE="${TABLE_SIZE:-100000}"
CHUNK_ROWS="${CHUNK_ROWS:-1000}"
OUT="${OUT:-$REPO_ROOT/target/bench/mysql_verify.json}"
KEEP_TMP="${KEEP_TMP:-0}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"

log() { printf '[mysql_verify.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
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
    MARIADB_PID=$REPLICA_PID stop_capgate_and_mariadb
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM
TMP="$(mktemp -d /tmp/capgate-myverify.XXXXXX)"

ensure_capgate_bin
read -r PPORT RPORT <<<"$(free_ports 2)"
MYOPTS=(--innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2)
log "MariaDB primary on port $PPORT, replica on port $RPORT"
MARIADB_DIR="$TMP/primary" start_mariadb "$PPORT" "${MYOPTS[@]}"
PRIMARY_PID=$MARIADB_PID
MARIADB_DIR="$TMP/replica" start_mariadb "$RPORT" "${MYOPTS[@]}"
REPLICA_PID=$MARIADB_PID
MARIADB_PID=""

my() { local port=$1; shift; mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$port" -ucapgate -N -B "$@"; }
log "sysbench prepare ($TABLES tables x $TABLE_SIZE rows) in sbtest, copied to the replica"
sysbench oltp_read_write --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$PPORT" --mysql-user=capgate \
    --mysql-db=sbtest --mysql-ssl=off --tables="$TABLES" --table-size="$TABLE_SIZE" prepare >"$TMP/prepare.log" 2>&1 \
    || { tail "$TMP/prepare.log" >&2; die "prepare failed"; }
mariadb-dump --no-defaults --protocol=TCP -h127.0.0.1 -P"$PPORT" -ucapgate sbtest | my "$RPORT" sbtest \
    || die "copying sbtest to the replica failed"

printf 'default = "local"\n[[table]]\nmatch = "sbtest.*"\nmode = "async"\n' >"$TMP/policy.toml"
cat >"$TMP/capgate.toml" <<CONF
site = "bench"
policy = "$TMP/policy.toml"
[primary]
url = "mysql://capgate@127.0.0.1:$PPORT/?sslmode=disable"
[[replicas]]
name = "east"
url = "mysql://capgate@127.0.0.1:$RPORT/?sslmode=disable"
CONF

CHECKSUM="CHECKSUM TABLE $(seq -s, -f 'sbtest.sbtest%g' "$TABLES") EXTENDED"
FAILED=0
: >"$TMP/times.tsv"
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$1" "$2"; }
run_checksum() {
    local start; start=$(now)
    my "$PPORT" -e "$CHECKSUM" >/dev/null && my "$RPORT" -e "$CHECKSUM" >/dev/null || FAILED=1
    printf 'checksum\t%s\n' "$(elapsed "$start" "$(now)")" >>"$TMP/times.tsv"
}
run_verify() {
    local start rc=0; start=$(now)
    "$CAPGATE_BIN" verify --config "$TMP/capgate.toml" --chunk-rows "$CHUNK_ROWS" --json >"$TMP/verify.json" 2>"$TMP/verify.err" || rc=$?
    printf 'verify\t%s\n' "$(elapsed "$start" "$(now)")" >>"$TMP/times.tsv"
    [[ $rc == 0 ]] || { FAILED=1; log "verify exited $rc: $(head -c 600 "$TMP/verify.json") $(cat "$TMP/verify.err")"; }
}
for round in $(seq "$ROUNDS"); do
    if (( round % 2 )); then run_checksum; run_verify; else run_verify; run_checksum; fi
    log "round $round: $(tail -2 "$TMP/times.tsv" | tr '\t\n' '= ')"
done

log "one row changed on the replica: verify must find it"
my "$RPORT" -e "UPDATE sbtest.sbtest1 SET k = k + 1 WHERE id = 4242"
rc=0
"$CAPGATE_BIN" verify --config "$TMP/capgate.toml" --table sbtest.sbtest1 >"$TMP/diverged.txt" 2>&1 || rc=$?
if [[ $rc == 1 ]] && grep -q "key (4242)" "$TMP/diverged.txt"; then FOUND=true; else FOUND=false; FAILED=1; cat "$TMP/diverged.txt" >&2; fi

mkdir -p "$(dirname "$OUT")"
python3 - "$TMP/times.tsv" "$TABLES" "$TABLE_SIZE" "$CHUNK_ROWS" "$FOUND" "$OUT" <<'PY'
import json, statistics, sys
times, tables, size, chunk, found, out = sys.argv[1:]
rows = [l.split("\t") for l in open(times).read().splitlines() if l]
t = {k: [float(r[1]) for r in rows if r[0] == k] for k in ("checksum", "verify")}
med = {k: statistics.median(v) if v else None for k, v in t.items()}
total = int(tables) * int(size)
result = {
    "tables": int(tables), "rows_per_table": int(size), "chunk_rows": int(chunk),
    "seconds": t, "median_seconds": med,
    "ratio_verify_checksum": med["verify"] / med["checksum"] if med["verify"] and med["checksum"] else None,
    "verify_rows_per_second": total / med["verify"] if med["verify"] else None,
    "changed_row_found": found == "true",
}
json.dump(result, open(out, "w"), indent=1)
print(json.dumps(result, indent=1))
PY
exit "$FAILED"

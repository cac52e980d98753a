#!/usr/bin/env bash
# benches/bounded_commit.sh — what bounded admission at COMMIT (decision 0024) costs pgbench's
# TPC-B, side by side: a direct connection, capgate built from a base commit, and capgate built
# from the working tree, in one run, alternating.
#
# The policy has one bounded table (not written by pgbench; pgbench's tables are local), so
# every TPC-B transaction is a writing transaction that "may change a bounded table":
#   within   the replica is up and the lag measured, every budget holds: no commit is held
#            (the per-commit cost is a look at the in-memory lags);
#   at-risk  the replica is unreachable, so its lag is never measured: every TPC-B COMMIT is
#            held and pays one extra round trip to the primary (`capgate.changed_tables()`).
# Reported per target: median TPS and median capgate CPU per transaction (µs/tx, utime +
# stime of the capgate process from /proc/PID/stat over the run), and ratios.
#
# Usage: BASE=d63a1b2 benches/bounded_commit.sh
#   BASE_BIN / HEAD_BIN  capgate binaries to compare (default: built here, debug, from BASE
#                        and from the working tree — debug overstates capgate's own CPU, the
#                        ratios between the two binaries are what this is for)
#   ROUNDS=3 DURATION=8 CLIENTS=4 SCALE=5 PGBIN=/usr/lib/postgresql/15/bin
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-4}
SCALE=${SCALE:-5}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BASE=${BASE:-main}
log() { echo "[bounded_commit] $*" >&2; }
die() { log "error: $*"; exit 1; }
TMP="$(mktemp -d /tmp/capgate-bounded-commit-XXXXXX)"
chmod 777 "$TMP"
# shellcheck source=benches/lib.sh
source "$REPO_ROOT/benches/lib.sh"
cleanup() {
    stop_capgate
    stop_postgres_named primary
    stop_postgres_named replica
    [[ -n "${KEEP_TMP:-}" ]] || rm -rf "$TMP"
}
trap cleanup EXIT

if [[ -z "${BASE_BIN:-}" ]]; then
    log "building capgate at $BASE (debug)"
    mkdir -p "$TMP/base"
    git -C "$REPO_ROOT" archive "$BASE" | tar -x -C "$TMP/base"
    (cd "$TMP/base" && CARGO_TARGET_DIR="$TMP/base-target" cargo build -q --bin capgate) || die "base build failed"
    BASE_BIN="$TMP/base-target/debug/capgate"
fi
if [[ -z "${HEAD_BIN:-}" ]]; then
    (cd "$REPO_ROOT" && cargo build -q --bin capgate) || die "build failed"
    cp "$REPO_ROOT/target/debug/capgate" "$TMP/capgate-head"
    HEAD_BIN="$TMP/capgate-head"
fi

read -r PPORT RPORT CPORT DEAD <<<"$(free_ports 4)"
start_postgres_named primary "$PPORT" "synchronous_commit = off" "max_connections = 100" "track_functions = 'all'"
start_postgres_named replica "$RPORT" "max_connections = 100" "max_prepared_transactions = 10"
"$PGBIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$PPORT" -U postgres postgres >"$TMP/init.log" 2>&1 || die "pgbench -i failed"
for port in "$PPORT" "$RPORT"; do
    psql -XAtq -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE TABLE bench_bounded (id int PRIMARY KEY, v text)" >/dev/null
done
printf 'default = "local"\n[[table]]\nmatch = "public.bench_bounded"\nmode = "bounded"\nmax_lag = "30s"\n' >"$TMP/policy.toml"

config() { # $1 = replica port, $2 = replica name (a new name has no lag measured yet)
    cat >"$TMP/capgate.toml" <<CONF
site = "bench"
listen = "127.0.0.1:$CPORT"
policy = "$TMP/policy.toml"
[primary]
url = "postgres://postgres@127.0.0.1:$PPORT/postgres?sslmode=disable"
[[replicas]]
name = "$2"
url = "postgres://postgres@127.0.0.1:$1/postgres?sslmode=disable&connect_timeout=2"
CONF
}

# Calls of capgate.changed_tables so far (the commits the bounded check looked at).
checks() {
    psql -XAtq -h 127.0.0.1 -p "$PPORT" -U postgres -d postgres -c "SELECT pg_stat_clear_snapshot()" \
        -c "SELECT coalesce((SELECT calls FROM pg_stat_user_functions WHERE schemaname = 'capgate' AND funcname = 'changed_tables'), 0)" | tail -1
}


# One pgbench run against port $1; prints "tps cpu_us_per_tx" (cpu 0 without a capgate pid $2).
run() {
    local port=$1 pid=${2:-} before=0 after=0 out tps txs
    psql -XAtq -h 127.0.0.1 -p "$PPORT" -U postgres -d postgres -c "TRUNCATE pgbench_history" -c "VACUUM pgbench_branches, pgbench_tellers" >/dev/null
    [[ -n "$pid" ]] && before=$(cpu_ticks "$pid")
    out=$("$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$DURATION" -M simple -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1) || { echo "$out" >&2; die "pgbench failed on port $port"; }
    [[ -n "$pid" ]] && after=$(cpu_ticks "$pid")
    tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
    txs=$(echo "$out" | awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]; exit}')
    python3 -c "import sys; t=$after-$before; hz=100; print($tps, (t/hz*1e6/$txs) if $txs else 0)"
}

declare -A RESULTS
for scenario in within at-risk; do
    if [[ $scenario == within ]]; then config "$RPORT" r; else config "$DEAD" dead; fi
    for round in $(seq "$ROUNDS"); do
        order=(base head direct)
        (( round % 2 == 0 )) && order=(head direct base)
        for target in "${order[@]}"; do
            case $target in
                direct) r=$(run "$PPORT") ;;
                *)
                    if [[ $target == base ]]; then CAPGATE_BIN=$BASE_BIN; else CAPGATE_BIN=$HEAD_BIN; fi
                    start_capgate_config "$TMP/capgate.toml" "$CPORT" "$TMP/capgate-$target.log"
                    sleep 3 # the first lag measurement (within budget)
                    checks_before=$(checks)
                    r=$(run "$CPORT" "$CAPGATE_PID")
                    stop_capgate
                    log "$scenario round $round $target: $(( $(checks) - checks_before )) commits checked (capgate.changed_tables calls)"
                    ;;
            esac
            log "$scenario round $round $target: tps, capgate µs/tx = $r"
            RESULTS[$scenario.$target]+="$r;"
        done
    done
done

args=()
for k in "${!RESULTS[@]}"; do args+=("$k" "${RESULTS[$k]}"); done
python3 - "${args[@]}" <<'PY'
import statistics, sys
args = sys.argv[1:]
res = {args[i]: [tuple(map(float, x.split())) for x in args[i + 1].split(';') if x] for i in range(0, len(args), 2)}
for scenario in ("within", "at-risk"):
    med = {t: (statistics.median(r[0] for r in res[f"{scenario}.{t}"]), statistics.median(r[1] for r in res[f"{scenario}.{t}"])) for t in ("direct", "base", "head")}
    print(f"{scenario:8} tps direct {med['direct'][0]:.0f}  base {med['base'][0]:.0f}  head {med['head'][0]:.0f}  "
          f"head/base {med['head'][0] / med['base'][0]:.3f}  head/direct {med['head'][0] / med['direct'][0]:.3f}  "
          f"capgate µs/tx base {med['base'][1]:.0f} head {med['head'][1]:.0f} (head/base {med['head'][1] / med['base'][1]:.3f})")
PY

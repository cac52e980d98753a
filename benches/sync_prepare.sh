#!/usr/bin/env bash
# benches/sync_prepare.sh — what capgate's sync capture costs the primary, for two builds of
# its SQL side by side: the capture trigger on a sync table and `capgate.sync_prepare` at
# COMMIT (no replica involved: only the primary's share of a sync commit).
#
# What it does, in one run on this machine
#   * starts one throwaway PostgreSQL 15 server on a free loopback port;
#   * creates two databases, `base` with the primary schema of git revision $BASE and `work`
#     with the one of the working tree (both extracted from src/store/postgres/primary.rs),
#     each with table bench_acct (100,000 rows) captured as `sync`;
#   * runs, $ROUNDS times alternating the two databases, pgbench -c $CLIENTS -T $DURATION
#     with the transaction a sync commit makes on the primary:
#       BEGIN ISOLATION LEVEL $LEVEL; UPDATE one row of the client's own; SELECT
#       capgate.sync_prepare(gid, …); COMMIT
#     in a session marked `capgate.session = on` (as capgate's client sessions are);
#   * reports per database the median TPS, the failed transactions (pgbench --failures-detailed:
#     serialization failures) and the server's CPU per transaction (user + system ticks of the
#     postmaster and all its children, reaped ones included, from /proc, over the run).
#
# Usage: benches/sync_prepare.sh     Environment (defaults in brackets):
#   BASE=HEAD~1  ROUNDS=3  DURATION=10  CLIENTS=4  LEVEL="READ COMMITTED"
#   PGBIN=/usr/lib/postgresql/15/bin  KEEP_TMP=0
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${BASE:-HEAD~1}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-4}"
LEVEL="${LEVEL:-READ COMMITTED}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
KEEP_TMP="${KEEP_TMP:-0}"

log() { echo "[sync_prepare] $*" >&2; }
die() { log "$*"; exit 2; }
TMP="$(mktemp -d /tmp/capgate-sync-prepare.XXXXXX)"
chmod 755 "$TMP"
chown postgres: "$TMP"
# shellcheck source=benches/lib.sh
source "$REPO_ROOT/benches/lib.sh"
cleanup() {
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pgdata" -m immediate stop >/dev/null 2>&1 || true
    [[ "$KEEP_TMP" == 1 ]] || rm -rf "$TMP"
}
trap cleanup EXIT

# The install script of a primary.rs: every migration step, then the functions.
install_sql() {
    python3 - "$1" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
steps = src[src.index("const PRIMARY_MIGRATIONS"):]
steps = steps[:steps.index("\n];")]
functions = re.search(r'const FUNCTIONS_SQL: &str = r#"(.*?)"#;', src, re.S).group(1)
print("BEGIN;\nCREATE SCHEMA capgate;")
for step in re.findall(r'r#"(.*?)"#', steps, re.S):
    print(step)
print(functions)
print("COMMIT;")
EOF
}

PORT="$(free_ports 1)"
start_postgres "$PORT" "max_connections = 50" "shared_buffers = 128MB" "synchronous_commit = off" "fsync = off"
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PORT" -U postgres)
git -C "$REPO_ROOT" show "$BASE:src/store/postgres/primary.rs" >"$TMP/base.rs"
cp "$REPO_ROOT/src/store/postgres/primary.rs" "$TMP/work.rs"
for db in base work; do
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE $db"
    install_sql "$TMP/$db.rs" >"$TMP/$db.sql"
    "${PSQL[@]}" -d "$db" -f "$TMP/$db.sql" >/dev/null
    "${PSQL[@]}" -d "$db" -c "CREATE TABLE bench_acct (id int PRIMARY KEY, v bigint NOT NULL) WITH (fillfactor = 50);
        INSERT INTO bench_acct SELECT g, 0 FROM generate_series(1, 100000) g; ANALYZE bench_acct;
        SELECT capgate.install_capture('bench_acct', 'sync', 'public.bench_acct');" >/dev/null
done
cat >"$TMP/tx.sql" <<EOF
BEGIN ISOLATION LEVEL $LEVEL;
UPDATE bench_acct SET v = v + 1 WHERE id = :client_id * 20000 + 1;
SELECT tables IS NOT NULL FROM capgate.sync_prepare('bench:' || pg_current_xact_id()::text, 'bench', false);
COMMIT;
EOF

# User + system ticks of the postmaster and its children (exited ones are in cutime/cstime).
server_ticks() {
    local pm
    pm="$(head -1 "$TMP/pgdata/postmaster.pid")"
    python3 - "$pm" <<'EOF'
import os, sys
pm = sys.argv[1]
def fields(pid):
    s = open(f"/proc/{pid}/stat").read()
    return s[s.rindex(")") + 2:].split()
f = fields(pm)
total = sum(int(x) for x in f[11:15])
for pid in os.listdir("/proc"):
    if pid.isdigit() and pid != pm:
        try:
            g = fields(pid)
        except OSError:
            continue
        if g[1] == pm:
            total += int(g[11]) + int(g[12])
print(total)
EOF
}

declare -A TPS FAILED CPU
for round in $(seq 1 "$ROUNDS"); do
    order=(base work)
    ((round % 2 == 0)) && order=(work base)
    for db in "${order[@]}"; do
        before="$(server_ticks)"
        out="$(PGOPTIONS="-c capgate.session=on" "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$DURATION" --failures-detailed \
            -f "$TMP/tx.sql" -h "$TMP" -p "$PORT" -U postgres "$db" 2>"$TMP/pgbench-$db.err")" || die "pgbench on $db failed: $(tail -3 "$TMP/pgbench-$db.err")"
        sleep 0.5
        after="$(server_ticks)"
        tx="$(awk '/number of transactions actually processed/ {print $NF}' <<<"$out" | cut -d/ -f1)"
        failed="$(awk '/number of failed transactions/ {print $5}' <<<"$out")"
        tps="$(awk '/^tps = / {print $3}' <<<"$out")"
        cpu_us="$(python3 -c "print(round(($after - $before) * 1e6 / $(getconf CLK_TCK) / max($tx, 1), 1))")"
        log "round $round $db: $tps tps, $tx transactions, ${failed:-0} failed, $cpu_us µs server CPU per transaction"
        TPS[$db]+="$tps " FAILED[$db]+="${failed:-0} " CPU[$db]+="$cpu_us "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
echo "sync capture + sync_prepare on the primary, $LEVEL, $CLIENTS clients, $ROUNDS × ${DURATION}s (medians)"
printf '%-6s %10s %10s %14s\n' db tps failed "µs CPU/tx"
for db in base work; do
    printf '%-6s %10s %10s %14s\n' "$db" "$(median <<<"${TPS[$db]}")" "$(median <<<"${FAILED[$db]}")" "$(median <<<"${CPU[$db]}")"
done
echo "base = $BASE, work = the working tree"

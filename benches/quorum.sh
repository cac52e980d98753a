#!/usr/bin/env bash
# benches/quorum.sh — sync commit latency under `quorum = 1` of two replicas, one near and one
# far (issue 16's target: commit latency ≤ 1.2 × the nearer RTT + the direct time).
#
# What it does, in one run on this machine
#   * starts three throwaway PostgreSQL 15 servers: A (primary), B and C (replicas), each with
#     max_prepared_transactions = 100, and `pgbench -i -s 1` on each (identical tables);
#   * puts capgate-link in front of B with $NEAR_MS ms added each way and in front of C with
#     $FAR_MS ms each way; measures each link's round trip (`SELECT 1` through it);
#   * one client runs `UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid`
#     for $DURATION s against:
#       direct      A directly;
#       quorum1     capgate, pgbench_accounts `sync` with `quorum = 1` (replicas B and C);
#       all         capgate, the same table `sync` without a quorum (both replicas);
#       near-cut    quorum1 again with B's link blackholed and capgate seeing B partitioned:
#                   commits follow the far replica;
#     then B's link is restored and the time until capgate's /status shows B with no
#     pending rows is reported (B catches up from the change stream), and the three sites
#     are compared (md5 of pgbench_accounts).
#
# How to read the output: the average latency of each target and the ratios
#   quorum1 / (1.2 × near RTT + direct)  — the target is ≤ 1;
#   all / (far RTT + direct)              — for comparison, what requiring every replica costs;
#   near-cut / (1.2 × far RTT + direct).
#
# Usage: benches/quorum.sh   (environment: NEAR_MS=25 FAR_MS=100 DURATION=10, CAPGATE_BIN,
#        LINK_BIN; without CAPGATE_BIN the release build is built and used; KEEP_TMP=1 keeps
#        the servers' logs, LOG_STATEMENT=all and LOG_CONNECTIONS=on make them say what
#        capgate runs on each)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NEAR_MS="${NEAR_MS:-25}"
FAR_MS="${FAR_MS:-100}"
DURATION="${DURATION:-10}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
LINK_BIN="${LINK_BIN:-$(dirname "$CAPGATE_BIN")/capgate-link}"
PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
TMP="$(mktemp -d /tmp/capgate-quorum.XXXXXX)"
chmod 755 "$TMP"
chown postgres: "$TMP"
log() { echo "[quorum] $*" >&2; }
die() { log "error: $*"; exit 1; }

LINKS=()
cleanup() {
    stop_capgate || true
    for pid in "${LINKS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for s in a b c; do stop_postgres_named "$s"; done
    [[ "${KEEP_TMP:-0}" == 1 ]] || rm -rf "$TMP"
}
trap cleanup EXIT

build_capgate_release
[[ -x "$LINK_BIN" ]] || die "$LINK_BIN is not an executable"
read -r PA PB PC CGPORT ADMIN < <(free_ports 5)
for s in a:$PA b:$PB c:$PC; do
    start_postgres_named "${s%%:*}" "${s##*:}" "max_prepared_transactions = 100" "max_connections = 200" "log_connections = ${LOG_CONNECTIONS:-off}" "log_statement = ${LOG_STATEMENT:-none}" "log_line_prefix = '%m [%p] %a '"
    pgbench -i -s 1 -q -h 127.0.0.1 -p "${s##*:}" -U postgres postgres >"$TMP/init-${s%%:*}.log" 2>&1 || die "pgbench -i failed"
done

# Two links: start_link keeps one set of variables, so each is saved after it starts.
start_link "$PB"; LINKS+=("$LINK_PID"); NEAR_LISTEN=$LINK_LISTEN; NEAR_CONTROL=$LINK_CONTROL; mv "$TMP/link.out" "$TMP/link-b.out"
start_link "$PC"; LINKS+=("$LINK_PID"); FAR_LISTEN=$LINK_LISTEN; FAR_CONTROL=$LINK_CONTROL
LINK_CONTROL=$NEAR_CONTROL; link_cmd "latency ${NEAR_MS}ms" >/dev/null
LINK_CONTROL=$FAR_CONTROL; link_cmd "latency ${FAR_MS}ms" >/dev/null

echo 'SELECT 1;' >"$TMP/select1.sql"
printf '\\set aid random(1, 100000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n' >"$TMP/update.sql"
# The direct run writes a copy on A (local to A), so the replicated table stays equal on all
# three sites.
psql -XAtq -h 127.0.0.1 -p "$PA" -U postgres -d postgres \
    -c "CREATE TABLE direct_accounts AS SELECT * FROM pgbench_accounts; ALTER TABLE direct_accounts ADD PRIMARY KEY (aid)" >/dev/null
sed 's/pgbench_accounts/direct_accounts/' "$TMP/update.sql" >"$TMP/update-direct.sql"

# Average latency (ms) of one client for $DURATION s: run NAME PORT [HOST] SCRIPT.
latency() {
    local name=$1 host=$2 port=$3 script=$4 out="$TMP/run-$1.log"
    pgbench -n -c 1 -T "$DURATION" -f "$script" -h "$host" -p "$port" -U postgres postgres >"$out" 2>&1 || { tail "$out" >&2; die "$name failed"; }
    if grep -qE 'ERROR|aborted' "$out"; then tail "$out" >&2; die "$name: errors"; fi
    sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "$out" | head -1
}

status() { curl -fsS "http://127.0.0.1:$ADMIN/status"; }
replica_field() { status | python3 -c "import json,sys; d=json.load(sys.stdin); print(next(r for r in d['replicas'] if r['name']==sys.argv[1]).get(sys.argv[2]))" "$1" "$2"; }
wait_field() { # replica field value timeout_s
    for _ in $(seq $(( $4 * 10 ))); do [[ "$(replica_field "$1" "$2" 2>/dev/null)" == "$3" ]] && return 0; sleep 0.1; done
    die "replica $1 never had $2 = $3"
}

capgate_with() { # quorum line
    stop_capgate
    printf 'default = "local"\n[[table]]\nmatch = "public.pgbench_accounts"\nmode = "sync"\n%s\n' "$1" >"$TMP/policy.toml"
    cat >"$TMP/capgate.toml" <<CONF
site = "a"
listen = "127.0.0.1:$CGPORT"
admin = "127.0.0.1:$ADMIN"
policy = "$TMP/policy.toml"
[primary]
url = "postgres://postgres@127.0.0.1:$PA/postgres?sslmode=disable"
[[replicas]]
name = "b"
url = "postgres://postgres@$NEAR_LISTEN/postgres?sslmode=disable"
partition_latency = "1s"
[[replicas]]
name = "c"
url = "postgres://postgres@$FAR_LISTEN/postgres?sslmode=disable"
partition_latency = "1s"
CONF
    start_capgate_config "$TMP/capgate.toml" "$CGPORT" "$TMP/capgate.log"
    wait_field b state healthy 30
    wait_field c state healthy 30
}

NEAR_RTT=$(latency near-rtt "${NEAR_LISTEN%:*}" "${NEAR_LISTEN##*:}" "$TMP/select1.sql")
FAR_RTT=$(latency far-rtt "${FAR_LISTEN%:*}" "${FAR_LISTEN##*:}" "$TMP/select1.sql")
DIRECT=$(latency direct 127.0.0.1 "$PA" "$TMP/update-direct.sql")
capgate_with "quorum = 1"
QUORUM1=$(latency quorum1 127.0.0.1 "$CGPORT" "$TMP/update.sql")
# Without a quorum a sync write waits for the table's queued changes (the quorum run's stream).
wait_field b pending_rows 0 120
wait_field c pending_rows 0 120
capgate_with ""
ALL=$(latency all 127.0.0.1 "$CGPORT" "$TMP/update.sql")
capgate_with "quorum = 1"
LINK_CONTROL=$NEAR_CONTROL; link_cmd blackhole >/dev/null
wait_field b state partitioned 30
NEAR_CUT=$(latency near-cut 127.0.0.1 "$CGPORT" "$TMP/update.sql")
link_cmd restore >/dev/null
link_cmd "latency ${NEAR_MS}ms" >/dev/null
start=$(date +%s.%N)
wait_field b pending_rows 0 300
CATCH_UP=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
stop_capgate
sum() { psql -XAtq -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts"; }
SA=$(sum "$PA"); SB=$(sum "$PB"); SC=$(sum "$PC")
SAME=no; [[ "$SA" == "$SB" && "$SA" == "$SC" ]] && SAME=yes

python3 - "$NEAR_MS" "$FAR_MS" "$NEAR_RTT" "$FAR_RTT" "$DIRECT" "$QUORUM1" "$ALL" "$NEAR_CUT" "$CATCH_UP" "$SAME" "$CAPGATE_BIN" <<'PY'
import sys
near_ms, far_ms = sys.argv[1], sys.argv[2]
near, far, direct, q1, allr, cut = map(float, sys.argv[3:9])
catch, same, binary = sys.argv[9], sys.argv[10], sys.argv[11]
print(f"capgate: {binary}")
print(f"links: near {near_ms} ms each way (SELECT 1 {near:.1f} ms), far {far_ms} ms each way (SELECT 1 {far:.1f} ms)")
print(f"{'target':<10} {'latency ms':>11}  ratio")
print(f"{'direct':<10} {direct:>11.2f}")
print(f"{'quorum1':<10} {q1:>11.2f}  {q1 / (1.2 * near + direct):.2f} of 1.2 x near RTT + direct (target <= 1)")
print(f"{'all':<10} {allr:>11.2f}  {allr / (far + direct):.2f} of far RTT + direct")
print(f"{'near-cut':<10} {cut:>11.2f}  {cut / (1.2 * far + direct):.2f} of 1.2 x far RTT + direct")
print(f"near replica caught up from the stream {catch} s after its link was restored; all three sites equal: {same}")
PY

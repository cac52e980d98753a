#!/usr/bin/env bash
# benches/semisync.sh — capgate's sync commit on MariaDB next to MariaDB's own semi-synchronous
# replication, the native anchor for "the commit waits for the other site" (issue 15's target:
# capgate with every table `sync` ≥ 0.8 × semi-sync's throughput), both over a link with
# $DELAY_MS ms added each way.
#
# What it does, in one run on this machine
#   * starts four throwaway MariaDB servers (buffer pool 256 MB, innodb_flush_log_at_trx_commit=2
#     as in benches/mysql_async.sh):
#       semi primary   binlog (ROW), rpl_semi_sync_master_enabled=ON, wait point $SEMI_WAIT_POINT,
#                      rpl_semi_sync_master_timeout=$SEMI_TIMEOUT_MS (no fallback during the runs);
#       semi replica   rpl_semi_sync_slave_enabled=ON, GTID replication (master_use_gtid=slave_pos)
#                      from the semi primary THROUGH capgate-link with $DELAY_MS ms each way;
#       cg primary     database `sbtest` (every table `sync`) and `sbdirect` (local: no capture
#                      trigger, the direct baseline: a plain MariaDB, no replication);
#       cg replica     a copy of cg primary's `sbtest`, reached by capgate through a second
#                      capgate-link with $DELAY_MS ms each way;
#   * `sysbench oltp_write_only prepare` ($TABLES × $TABLE_SIZE rows) on both primaries;
#   * each round runs sysbench oltp_write_only ($THREADS threads, $DURATION s, server-side
#     prepared statements) against direct, semisync and capgate, rotating the order;
#   * checks that semi-sync really waited: Rpl_semi_sync_master_yes_tx grows by the run's
#     transactions and Rpl_semi_sync_master_no_tx does not move;
#   * reads capgate's CPU time (utime + stime, /proc/PID/stat) around each capgate run;
#   * round trips: one more capgate run of $PROBE_DURATION s with the cg replica's general log
#     on; counts the queries capgate sent to the replica per sysbench transaction (each query
#     is one round trip over the link) and the connections it opened;
#   * afterwards compares CHECKSUM TABLE … EXTENDED of each primary with its replica;
#   * the silent fallback: rpl_semi_sync_master_timeout set to $FALLBACK_TIMEOUT_MS, both links
#     blackholed (the replica side hears nothing, no error), then $FALLBACK_N autocommit
#     INSERTs into a fallback table on each side: the semi primary commits them (counted, with
#     Rpl_semi_sync_master_no_tx and _status) while its replica has none of them; capgate
#     refuses them (counted, with the first error) and neither of its sites has any.
#
# How to read the output
#   Per target the median TPS, p95 and average latency (ms) over the rounds, the worst latency, the ratios capgate /
#   semisync (target ≥ 0.8) and capgate / direct, capgate's CPU per transaction (µs), the
#   probe's replica queries per transaction, and the fallback demonstration's counts. Every
#   process shares the machine's cores. Everything is also written as JSON to $OUT.
#
# Usage
#   benches/semisync.sh [--quick]       (--quick: ROUNDS=1 DURATION=5)
#   Environment: ROUNDS=3 DURATION=20 THREADS=16 TABLES=4 TABLE_SIZE=10000 DELAY_MS=25
#     SEMI_TIMEOUT_MS=600000 SEMI_WAIT_POINT=AFTER_SYNC (or AFTER_COMMIT, MariaDB's default,
#     which lets other transactions see a commit before the replica has it)
#     FALLBACK_TIMEOUT_MS=1000 FALLBACK_N=50 PROBE_DURATION=5 REPORT_INTERVAL=0 (N: sysbench
#     prints every N s into the kept run logs, with KEEP_TMP=1) SB_EXTRA="" (more sysbench
#     run options, e.g. --histogram=on)
#     CAPGATE_BIN=target/release/capgate (without it: `cargo build --release`, then that one)
#     LINK_BIN=capgate-link next to CAPGATE_BIN; OUT=target/bench/semisync.json KEEP_TMP=1
# Exit status: 0 when every run succeeded, semi-sync never fell back during the runs and the
# sites are equal; 1 otherwise; 2 on setup errors.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "--quick" ]]; then
    ROUNDS=1 DURATION=5
    shift
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--quick]   (options are environment variables, see header)" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-20}"
THREADS="${THREADS:-16}"
TABLES="${TABLES:-4}"
TABLE_SIZE="${TABLE_SIZE:-10000}"
DELAY_MS="${DELAY_MS:-25}"
SEMI_TIMEOUT_MS="${SEMI_TIMEOUT_MS:-600000}"
SEMI_WAIT_POINT="${SEMI_WAIT_POINT:-AFTER_SYNC}"
FALLBACK_TIMEOUT_MS="${FALLBACK_TIMEOUT_MS:-1000}"
FALLBACK_N="${FALLBACK_N:-50}"
PROBE_DURATION="${PROBE_DURATION:-5}"
REPORT_INTERVAL="${REPORT_INTERVAL:-0}"
read -r -a SB_EXTRA <<<"${SB_EXTRA:-}"
OUT="${OUT:-$REPO_ROOT/target/bench/semisync.json}"
KEEP_TMP="${KEEP_TMP:-0}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
LINK_BIN="${LINK_BIN:-$(dirname "$CAPGATE_BIN")/capgate-link}"

log() { printf '[semisync.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
# shellcheck source=benches/mylib.sh
. "$REPO_ROOT/benches/mylib.sh"
for tool in sysbench mariadbd mariadb-install-db mariadb mariadb-dump python3 curl; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

TMP=""
CAPGATE_PID=""
SERVERS=()
LINKS=()
cleanup() {
    local rc=$? pid
    set +e
    trap - EXIT INT TERM
    stop_capgate
    for pid in "${LINKS[@]}"; do LINK_PID=$pid stop_link; done
    for pid in "${SERVERS[@]}"; do CAPGATE_PID="" MARIADB_PID=$pid stop_capgate_and_mariadb; done
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM
TMP="$(mktemp -d /tmp/capgate-semisync.XXXXXX)"

build_capgate_release
[[ -x "$LINK_BIN" ]] || die "$LINK_BIN is not an executable"
read -r SP SR CP CR CGPORT ADMIN <<<"$(free_ports 6)"
MYOPTS=(--innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --max-connections=500 --innodb-log-file-size=256M)
log "MariaDB: semi primary $SP, semi replica $SR, cg primary $CP, cg replica $CR"
# Semi-sync is switched on once the server runs (below): enabled at start, the CREATE USER of
# start_mariadb would wait for a replica that is not there yet.
MARIADB_DIR="$TMP/semi-primary" start_mariadb "$SP" "${MYOPTS[@]}" --server-id=1 --log-bin=binlog --binlog-format=ROW
SERVERS+=("$MARIADB_PID")
MARIADB_DIR="$TMP/semi-replica" start_mariadb "$SR" "${MYOPTS[@]}" --server-id=2 --rpl-semi-sync-slave-enabled=ON
SERVERS+=("$MARIADB_PID")
MARIADB_DIR="$TMP/cg-primary" start_mariadb "$CP" "${MYOPTS[@]}"
SERVERS+=("$MARIADB_PID")
MARIADB_DIR="$TMP/cg-replica" start_mariadb "$CR" "${MYOPTS[@]}"
SERVERS+=("$MARIADB_PID")
MARIADB_PID=""

my() { local port=$1; shift; mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$port" -ucapgate -N -B "$@"; }
status_var() { my "$1" -e "SHOW GLOBAL STATUS LIKE '$2'" | cut -f2; }
sb() {
    local port=$1 db=$2; shift 2
    sysbench oltp_write_only --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" --mysql-user=capgate \
        --mysql-db="$db" --mysql-ssl=off --tables="$TABLES" --table-size="$TABLE_SIZE" "$@"
}

# The two links: start_link keeps one set of variables, so each is saved after it starts.
start_link "$SP"; LINKS+=("$LINK_PID"); SEMI_LINK=$LINK_LISTEN; SEMI_CONTROL=$LINK_CONTROL; mv "$TMP/link.out" "$TMP/link-semi.out"
start_link "$CR"; LINKS+=("$LINK_PID"); CG_LINK=$LINK_LISTEN; CG_CONTROL=$LINK_CONTROL
for c in "$SEMI_CONTROL" "$CG_CONTROL"; do LINK_CONTROL=$c link_cmd "latency ${DELAY_MS}ms" >/dev/null; done

log "semi replica: GTID replication from the semi primary through the link ($SEMI_LINK)"
my "$SP" -e "SET GLOBAL rpl_semi_sync_master_wait_point = $SEMI_WAIT_POINT; SET GLOBAL rpl_semi_sync_master_timeout = $SEMI_TIMEOUT_MS;
    SET GLOBAL rpl_semi_sync_master_enabled = ON"
my "$SR" -e "SET GLOBAL gtid_slave_pos = '$(my "$SP" -e 'SELECT @@gtid_binlog_pos')';
    CHANGE MASTER TO master_host = '${SEMI_LINK%:*}', master_port = ${SEMI_LINK##*:}, master_user = 'capgate',
        master_use_gtid = slave_pos, master_connect_retry = 1;
    START SLAVE"
for _ in $(seq 300); do [[ "$(status_var "$SP" Rpl_semi_sync_master_clients)" == 1 ]] && break; sleep 0.1; done
[[ "$(status_var "$SP" Rpl_semi_sync_master_clients)" == 1 ]] || die "the semi replica did not connect as a semi-sync client"

log "sysbench prepare ($TABLES tables x $TABLE_SIZE rows): semi primary sbtest, cg primary sbtest and sbdirect"
my "$CP" -e "CREATE DATABASE sbdirect"
FALLBACK_DDL="CREATE TABLE sbtest.fallback (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL)"
for target in "$SP sbtest" "$CP sbtest" "$CP sbdirect"; do
    read -r port db <<<"$target"
    sb "$port" "$db" prepare >"$TMP/prepare.log" 2>&1 || { tail "$TMP/prepare.log" >&2; die "prepare failed"; }
done
my "$SP" -e "$FALLBACK_DDL"
my "$CP" -e "$FALLBACK_DDL"
mariadb-dump --no-defaults --protocol=TCP -h127.0.0.1 -P"$CP" -ucapgate --skip-triggers sbtest | my "$CR" sbtest \
    || die "copying sbtest to the cg replica failed"
# The semi replica caught up with prepare (its GTID position reached the primary's).
wait_caught_up() {
    local want
    want="$(my "$SP" -e 'SELECT @@gtid_binlog_pos')"
    for _ in $(seq "${1:-600}"); do [[ "$(my "$SR" -e 'SELECT @@gtid_slave_pos')" == "$want" ]] && return 0; sleep 0.1; done
    return 1
}
wait_caught_up || die "the semi replica did not catch up with prepare"

printf 'default = "local"\n[[table]]\nmatch = "sbtest.*"\nmode = "sync"\n' >"$TMP/policy.toml"
cat >"$TMP/capgate.toml" <<CONF
site = "bench"
listen = "127.0.0.1:$CGPORT"
admin = "127.0.0.1:$ADMIN"
max_connections = 2000
policy = "$TMP/policy.toml"
[primary]
url = "mysql://capgate@127.0.0.1:$CP/?sslmode=disable"
[[replicas]]
name = "east"
url = "mysql://capgate@$CG_LINK/?sslmode=disable"
CONF
log "capgate on port $CGPORT ($CAPGATE_BIN), its replica through the link ($CG_LINK)"
# In a session of its own, as the servers (benches/mylib.sh start_mariadb).
setsid "$CAPGATE_BIN" run --config "$TMP/capgate.toml" >"$TMP/capgate.log" 2>&1 &
CAPGATE_PID=$!
own_session "$CAPGATE_PID" capgate
replica_state() {
    curl -fsS "http://127.0.0.1:$ADMIN/status" 2>/dev/null \
        | python3 -c "import json,sys; print(next(r['state'] for r in json.load(sys.stdin)['replicas'] if r['name'] == 'east'))" 2>/dev/null
}
wait_state() {
    for _ in $(seq 600); do [[ "$(replica_state)" == "$1" ]] && return 0; kill -0 "$CAPGATE_PID" 2>/dev/null || break; sleep 0.1; done
    tail -30 "$TMP/capgate.log" >&2
    die "capgate's replica never became $1"
}
wait_state healthy
for _ in $(seq 300); do my "$CGPORT" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done

TICK_US=$((1000000 / $(getconf CLK_TCK)))
FAILED=0
RUNS="$TMP/runs.tsv"
: >"$RUNS"
# One sysbench run: round, target → a line of runs.tsv: round target tps p95_ms avg_ms max_ms
# transactions capgate_cpu_us semi_yes semi_no (0 where they do not apply), then the row lock
# waits (Innodb_row_lock_waits) on the target's primary and on its replica during the run.
run() {
    local round=$1 target=$2 port db before=0 after=0 yes0=0 no0=0 yes1=0 no1=0 tps p95 tx log
    local primary replica=0 pw0 rw0=0
    case $target in
        direct) port=$CP db=sbdirect primary=$CP ;;
        semisync) port=$SP db=sbtest primary=$SP replica=$SR ;;
        capgate) port=$CGPORT db=sbtest primary=$CP replica=$CR ;;
    esac
    waits() { if [[ $1 == 0 ]]; then echo 0; else status_var "$1" Innodb_row_lock_waits; fi; }
    pw0=$(waits "$primary"); rw0=$(waits "$replica")
    if [[ $target == semisync ]]; then
        yes0=$(status_var "$SP" Rpl_semi_sync_master_yes_tx); no0=$(status_var "$SP" Rpl_semi_sync_master_no_tx)
    fi
    [[ $target == capgate ]] && before=$(cpu_ticks "$CAPGATE_PID")
    if ! sb "$port" "$db" --threads="$THREADS" --time="$DURATION" --report-interval="$REPORT_INTERVAL" "${SB_EXTRA[@]}" run \
        >"$TMP/run-$target-$round.log" 2>&1; then
        FAILED=1; tail -20 "$TMP/run-$target-$round.log" >&2
        return 0
    fi
    [[ $target == capgate ]] && after=$(cpu_ticks "$CAPGATE_PID")
    if [[ $target == semisync ]]; then
        yes1=$(status_var "$SP" Rpl_semi_sync_master_yes_tx); no1=$(status_var "$SP" Rpl_semi_sync_master_no_tx)
    fi
    log="$TMP/run-$target-$round.log"
    tps=$(awk '/transactions:/ { gsub(/[()]/, "", $3); print $3 }' "$log")
    tx=$(awk '/transactions:/ { print $2 }' "$log")
    p95=$(awk '/95th percentile:/ { print $3 }' "$log")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$tps" "$p95" "$(awk '$1 == "avg:" { print $2 }' "$log")" \
        "$(awk '$1 == "max:" { print $2 }' "$log")" "$tx" "$(( (after - before) * TICK_US ))" "$((yes1 - yes0))" "$((no1 - no0))" \
        "$(( $(waits "$primary") - pw0 ))" "$(( $(waits "$replica") - rw0 ))" >>"$RUNS"
    log "round $round $target: $tps tps, p95 $p95 ms"
}
ORDERS=("direct semisync capgate" "semisync capgate direct" "capgate direct semisync")
for round in $(seq "$ROUNDS"); do
    for target in ${ORDERS[$(( (round - 1) % 3 ))]}; do run "$round" "$target"; done
done
[[ "$(status_var "$SP" Rpl_semi_sync_master_status)" == ON ]] || { FAILED=1; log "semi-sync is OFF after the runs"; }

log "round-trip probe: $PROBE_DURATION s through capgate with the cg replica's general log on"
my "$CR" -e "SET GLOBAL general_log_file = '$TMP/cg-replica/general.log'; SET GLOBAL general_log = ON"
link_stats() { LINK_CONTROL=$CG_CONTROL link_cmd stats | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
conns0=$(link_stats connections)
sb "$CGPORT" sbtest --threads="$THREADS" --time="$PROBE_DURATION" --report-interval=0 run >"$TMP/run-probe.log" 2>&1 \
    || { FAILED=1; tail -20 "$TMP/run-probe.log" >&2; }
sleep 1 # the last XA COMMITs follow the client's COMMIT off its path
my "$CR" -e "SET GLOBAL general_log = OFF"
PROBE_TX=$(awk '/transactions:/ { print $2 }' "$TMP/run-probe.log")
PROBE_CONNS=$(( $(link_stats connections) - conns0 ))
# One line per general-log entry of capgate's replica connections: the command and the text's
# first two words (the health loop's COM_PING is not a Query).
python3 - "$TMP/cg-replica/general.log" >"$TMP/probe-kinds.txt" <<'PY'
import collections, re, sys
kinds = collections.Counter()
entry = re.compile(r"^(?:\d{6}\s+[\d:]+\s+|\s+)\s*\d+\s+(Query|Connect|Quit|Prepare|Execute|Close stmt|Init DB|Ping)\t?(.*)$")
for line in open(sys.argv[1], errors="replace"):
    m = entry.match(line)
    if not m:
        continue
    cmd, text = m.groups()
    if cmd == "Query":
        words = text.split()
        key = " ".join(words[:2]).upper() if words and words[0].upper() == "XA" else (words[0].upper() if words else "")
        if key.startswith("SET") and "GENERAL_LOG" in text.upper():
            continue
        kinds["Query " + key] += 1
    else:
        kinds[cmd] += 1
for k, n in sorted(kinds.items()):
    print(f"{n}\t{k}")
PY
log "probe: $PROBE_TX transactions, $PROBE_CONNS new connections through the link; replica's log:"
sed 's/^/    /' "$TMP/probe-kinds.txt" >&2

log "comparing each primary with its replica (CHECKSUM TABLE ... EXTENDED)"
CHECKSUM="CHECKSUM TABLE $(seq -s, -f 'sbtest.sbtest%g' "$TABLES") EXTENDED"
wait_caught_up || { FAILED=1; log "the semi replica did not catch up"; }
# capgate's XA COMMITs follow the client's COMMIT off its path; a branch whose XA COMMIT failed
# waits for the next recovery round (every 5 s).
for _ in $(seq 300); do [[ -z "$(my "$CR" -e 'XA RECOVER')" ]] && break; sleep 0.1; done
[[ -z "$(my "$CR" -e 'XA RECOVER')" ]] || { FAILED=1; log "XA branches still prepared on the cg replica after 30 s"; }
SEMI_EQUAL=false CG_EQUAL=false
[[ "$(my "$SP" -e "$CHECKSUM")" == "$(my "$SR" -e "$CHECKSUM")" ]] && SEMI_EQUAL=true || FAILED=1
[[ "$(my "$CP" -e "$CHECKSUM")" == "$(my "$CR" -e "$CHECKSUM")" ]] && CG_EQUAL=true || FAILED=1

log "the silent fallback: rpl_semi_sync_master_timeout = $FALLBACK_TIMEOUT_MS ms, both links blackholed"
for i in $(seq "$FALLBACK_N"); do echo "INSERT INTO fallback (at) VALUES (NOW(6));"; done >"$TMP/fallback.sql"
# Run the inserts against port $1, each on its own (errors do not stop the rest): "ok errors
# seconds", the first error in $TMP/fallback-$2.err.
inserts() {
    local start end errors
    start=$(date +%s.%N)
    my "$1" --force sbtest <"$TMP/fallback.sql" 2>"$TMP/fallback-$2.err" || true
    end=$(date +%s.%N)
    errors=$(grep -c '^ERROR' "$TMP/fallback-$2.err" || true)
    echo "$((FALLBACK_N - errors)) $errors $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$start" "$end")"
}
my "$SP" -e "SET GLOBAL rpl_semi_sync_master_timeout = $FALLBACK_TIMEOUT_MS"
FB_NO0=$(status_var "$SP" Rpl_semi_sync_master_no_tx); FB_YES0=$(status_var "$SP" Rpl_semi_sync_master_yes_tx)
for c in "$SEMI_CONTROL" "$CG_CONTROL"; do LINK_CONTROL=$c link_cmd blackhole >/dev/null; done
read -r SEMI_OK SEMI_ERR SEMI_S <<<"$(inserts "$SP" semi)"
FB_NO=$(( $(status_var "$SP" Rpl_semi_sync_master_no_tx) - FB_NO0 )); FB_YES=$(( $(status_var "$SP" Rpl_semi_sync_master_yes_tx) - FB_YES0 ))
FB_STATUS=$(status_var "$SP" Rpl_semi_sync_master_status)
SEMI_PRIMARY_ROWS=$(my "$SP" -e "SELECT COUNT(*) FROM sbtest.fallback"); SEMI_REPLICA_ROWS=$(my "$SR" -e "SELECT COUNT(*) FROM sbtest.fallback")
read -r CG_OK CG_ERR CG_S <<<"$(inserts "$CGPORT" capgate)"
CG_STATE=$(replica_state)
CG_FIRST_ERROR=$(grep -m1 '^ERROR' "$TMP/fallback-capgate.err" || true)
CG_PRIMARY_ROWS=$(my "$CP" -e "SELECT COUNT(*) FROM sbtest.fallback"); CG_REPLICA_ROWS=$(my "$CR" -e "SELECT COUNT(*) FROM sbtest.fallback")
log "semi-sync: $SEMI_OK committed, $SEMI_ERR errors in $SEMI_S s (no_tx +$FB_NO, yes_tx +$FB_YES, status $FB_STATUS); rows: primary $SEMI_PRIMARY_ROWS, replica $SEMI_REPLICA_ROWS"
log "capgate: $CG_OK committed, $CG_ERR refused in $CG_S s (replica $CG_STATE); rows: primary $CG_PRIMARY_ROWS, replica $CG_REPLICA_ROWS; first: $CG_FIRST_ERROR"
# Back to the delay; `reset` closes the connections that lost bytes in the blackhole (the
# semi replica reconnects and resumes from its GTID position, capgate opens new ones).
for c in "$SEMI_CONTROL" "$CG_CONTROL"; do
    for cmd in restore "latency ${DELAY_MS}ms" reset; do LINK_CONTROL=$c link_cmd "$cmd" >/dev/null; done
done
# After the cut the semi replica gets the rows asynchronously, and semi-sync turns itself on.
SEMI_LATER_ROWS=""
if wait_caught_up 600; then SEMI_LATER_ROWS=$(my "$SR" -e "SELECT COUNT(*) FROM sbtest.fallback"); fi
my "$SP" -e "INSERT INTO sbtest.fallback (at) VALUES (NOW(6))" # semi-sync is switched back on by the next commit's ACK
SEMI_STATUS_AFTER=$(status_var "$SP" Rpl_semi_sync_master_status)

mkdir -p "$(dirname "$OUT")"
python3 - "$RUNS" "$OUT" "$THREADS" "$DURATION" "$ROUNDS" "$DELAY_MS" "$CAPGATE_BIN" "$PROBE_TX" "$PROBE_CONNS" \
    "$TMP/probe-kinds.txt" "$SEMI_EQUAL" "$CG_EQUAL" "$FALLBACK_TIMEOUT_MS" "$FALLBACK_N" \
    "$SEMI_OK $SEMI_ERR $SEMI_S $FB_NO $FB_YES $FB_STATUS $SEMI_PRIMARY_ROWS $SEMI_REPLICA_ROWS ${SEMI_LATER_ROWS:-?} $SEMI_STATUS_AFTER" \
    "$CG_OK $CG_ERR $CG_S $CG_STATE $CG_PRIMARY_ROWS $CG_REPLICA_ROWS" "$CG_FIRST_ERROR" "$SEMI_WAIT_POINT" <<'PY'
import json, statistics, sys
(runs_file, out, threads, duration, rounds, delay, binary, probe_tx, probe_conns, kinds_file, semi_equal, cg_equal,
 fb_timeout, fb_n, semi_fb, cg_fb, cg_first, wait_point) = sys.argv[1:]
runs = []
for line in open(runs_file):
    r, t, tps, p95, avg, mx, tx, cpu, yes, no, pw, rw = line.rstrip("\n").split("\t")
    runs.append({"round": int(r), "target": t, "tps": float(tps), "p95_ms": float(p95), "avg_ms": float(avg), "max_ms": float(mx),
                 "transactions": int(tx), "capgate_cpu_us": int(cpu), "semi_yes_tx": int(yes), "semi_no_tx": int(no),
                 "primary_row_lock_waits": int(pw), "replica_row_lock_waits": int(rw)})
def med(target, key):
    v = [r[key] for r in runs if r["target"] == target]
    return statistics.median(v) if v else None
tps = {t: med(t, "tps") for t in ("direct", "semisync", "capgate")}
p95 = {t: med(t, "p95_ms") for t in ("direct", "semisync", "capgate")}
avg = {t: med(t, "avg_ms") for t in ("direct", "semisync", "capgate")}
worst = {t: max((r["max_ms"] for r in runs if r["target"] == t), default=None) for t in ("direct", "semisync", "capgate")}
def waits(target, key):
    v = [100 * r[key] / r["transactions"] for r in runs if r["target"] == target and r["transactions"]]
    return statistics.median(v) if v else None
lock_waits = {t: {"primary": waits(t, "primary_row_lock_waits"), "replica": waits(t, "replica_row_lock_waits")}
              for t in ("direct", "semisync", "capgate")}
cg = [r for r in runs if r["target"] == "capgate" and r["transactions"]]
cpu = statistics.median(r["capgate_cpu_us"] / r["transactions"] for r in cg) if cg else None
semi = [r for r in runs if r["target"] == "semisync"]
ratio = lambda a, b: a / b if a and b else None
kinds = {}
for line in open(kinds_file):
    n, k = line.rstrip("\n").split("\t", 1)
    kinds[k] = int(n)
ptx = int(probe_tx or 0)
s = semi_fb.split()
c = cg_fb.split()
result = {
    "workload": "oltp_write_only", "threads": int(threads), "duration_s": int(duration), "rounds": int(rounds),
    "delay_ms_each_way": int(delay), "capgate": binary, "semi_wait_point": wait_point,
    "median_tps": tps, "median_p95_ms": p95, "median_avg_ms": avg, "max_ms": worst,
    "row_lock_waits_per_100_tx": lock_waits,
    "ratio_capgate_semisync": ratio(tps["capgate"], tps["semisync"]),
    "ratio_capgate_direct": ratio(tps["capgate"], tps["direct"]),
    "ratio_semisync_direct": ratio(tps["semisync"], tps["direct"]),
    "capgate_cpu_us_per_tx": cpu,
    "semisync_waited_every_commit": all(r["semi_no_tx"] == 0 and r["semi_yes_tx"] >= r["transactions"] for r in semi),
    "probe": {"transactions": ptx, "new_replica_connections": int(probe_conns or 0), "replica_log": kinds,
              "replica_queries_per_tx": {k: round(n / ptx, 3) for k, n in kinds.items()} if ptx else None},
    "checksums_equal": {"semisync": semi_equal == "true", "capgate": cg_equal == "true"},
    "fallback": {
        "rpl_semi_sync_master_timeout_ms": int(fb_timeout), "inserts": int(fb_n),
        "semisync": {"committed": int(s[0]), "errors": int(s[1]), "seconds": float(s[2]), "no_tx": int(s[3]),
                     "yes_tx": int(s[4]), "status_during_cut": s[5], "primary_rows": int(s[6]), "replica_rows_during_cut": int(s[7]),
                     "replica_rows_after_restore": s[8], "status_after_restore": s[9]},
        "capgate": {"committed": int(c[0]), "refused": int(c[1]), "seconds": float(c[2]), "replica_state": c[3],
                    "primary_rows": int(c[4]), "replica_rows": int(c[5]), "first_error": cg_first},
    },
    "runs": runs,
}
json.dump(result, open(out, "w"), indent=1)
f = lambda x, spec: format(x, spec) if x is not None else "FAIL"
print(f"sysbench oltp_write_only, {threads} threads, {duration} s per run, {delay} ms added each way, median of {rounds} round(s); "
      f"semi-sync wait point {wait_point}")
print(f"{'target':<10} {'tps':>9} {'p95 ms':>8} {'avg ms':>8} {'max ms':>9} {'lock waits/100 tx: primary':>27} {'replica':>8}")
for t in ("direct", "semisync", "capgate"):
    print(f"{t:<10} {f(tps[t], '9.1f'):>9} {f(p95[t], '8.2f'):>8} {f(avg[t], '8.2f'):>8} {f(worst[t], '9.2f'):>9} "
          f"{f(lock_waits[t]['primary'], '27.2f'):>27} {f(lock_waits[t]['replica'], '8.2f'):>8}")
print(f"capgate / semisync {f(result['ratio_capgate_semisync'], '.3f')} (target >= 0.8), capgate / direct "
      f"{f(result['ratio_capgate_direct'], '.3f')}; capgate CPU {f(cpu, '.1f')} µs per transaction")
print(f"semi-sync waited for the replica on every commit: {result['semisync_waited_every_commit']}; "
      f"checksums equal: semisync {semi_equal}, capgate {cg_equal}")
print(f"probe: {ptx} transactions, {probe_conns} new replica connections, replica queries per transaction: "
      + ", ".join(f"{k} {v}" for k, v in (result['probe']['replica_queries_per_tx'] or {}).items()))
fs, fc = result["fallback"]["semisync"], result["fallback"]["capgate"]
print(f"fallback, link cut, {fb_n} autocommit inserts each, rpl_semi_sync_master_timeout = {fb_timeout} ms:")
print(f"  semi-sync: {fs['committed']} committed in {fs['seconds']} s (no_tx +{fs['no_tx']}, status {fs['status_during_cut']}); "
      f"rows on the primary {fs['primary_rows']}, on the replica {fs['replica_rows_during_cut']} (after restore {fs['replica_rows_after_restore']}, status {fs['status_after_restore']})")
print(f"  capgate:   {fc['committed']} committed, {fc['refused']} refused in {fc['seconds']} s (replica {fc['replica_state']}); "
      f"rows on the primary {fc['primary_rows']}, on the replica {fc['replica_rows']}; first: {fc['first_error']}")
PY
exit "$FAILED"

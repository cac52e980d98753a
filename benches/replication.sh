#!/usr/bin/env bash
# benches/replication.sh — what replication costs: capgate's sync (two-phase commit) and
# async (row images, decision 0009) modes against a direct connection, capgate with the same
# tables `local`, and Pgpool-II native replication; sync writes and TPC-B over a slow link;
# how fast an async backlog drains.
#
# What it does, in one run on this machine
#   * starts two throwaway PostgreSQL 15 servers, site A (primary) and site B (replica),
#     each on its own free loopback port with max_prepared_transactions = 100,
#     max_connections = 300, shared_buffers = 256MB and synchronous_commit = $SYNC_COMMIT
#     (off by default, as in benches/pgbench.sh: CPU-bound rather than fsync-bound; note
#     that PREPARE TRANSACTION flushes WAL whatever this setting says);
#   * 1. TPC-B (default pgbench script, simple protocol, -c $CLIENTS -j $JOBS -T $DURATION -n)
#     against
#       direct   site A directly (B idle),
#       sync     capgate with the four pgbench tables `sync` (replica URL: B directly),
#       async    capgate with the four tables `async`; /status is sampled every
#                $LAG_INTERVAL s during the run for replicas[0].lag_seconds (p50/p99/max
#                over all samples of all rounds), and after the run the time until
#                pending_rows reaches 0 is measured (the tail left at the end of the load),
#       local    capgate with the four tables `local` (what async costs over the relay),
#       pgpool   Pgpool-II native replication mode over A and B (if `pgpool` is installed;
#                INSTALL=1 installs it with apt-get), load_balance_mode off;
#     the order of the targets is rotated every round, and before EVERY run both sites are
#     re-initialised (`pgbench -i -s $SCALE` on A and on B, directly, plus a primary key on
#     pgbench_history: row changes are matched by key), so each run starts
#     from identical tables on both sites. After each replicated run the script compares
#     the two sites (md5 of accounts/tellers/branches, count and sum of history) and, for
#     capgate, looks for prepared transactions left behind.
#   * 2. Sync write latency over a slow link: capgate-link in front of B with $LATENCY_MS ms
#     added each way (RTT = 2 × LATENCY_MS), capgate's replica URL pointing at the link.
#     One client runs `UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid`
#     (aid random over the table) for $LAT_DURATION s, direct to A and through capgate
#     (sync); the target is capgate ≤ 1.2 × RTT + direct. The link's own RTT is measured
#     too (`SELECT 1` through it).
#   * 2b. Over the same link: transactions of 1, 10 and 100 single-row UPDATEs (one client,
#     $LAT_DURATION s), direct and through capgate `sync` (target: ≤ direct + 1 replica round
#     trip whatever the count); then TPC-B through capgate `sync` and through Pgpool-II with
#     its second backend behind the link (target capgate ≥ 5 × Pgpool-II). Printed last.
#   * 3. Async drain rate over the same link: capgate with the tables `async`, the link cut
#     (`refuse on` + `reset`: new connections refused, open ones reset), $BACKLOG
#     single-row UPDATEs through capgate (-c $CLIENTS, -t BACKLOG/CLIENTS), then the link
#     restored (`refuse off`, latency kept) and the time until /status pending_rows = 0:
#     statements per second and statements per round trip (= statements / (drain s / RTT s)).
#     Drain time is reported from the restore (includes the shipper's reconnect backoff,
#     up to 5 s) and from the first progress seen in /status (the rate uses the latter).
#     /metrics (capgate_shipped_changes_total, capgate_shipped_batches_total) gives
#     the statements per batch (one batch = one round trip).
#
# How to read the output
#   The TPC-B table gives median TPS and median "latency average" per target, then
#   sync/direct, sync/pgpool and async/direct (ratios of median TPS). "consistent" says
#   whether A and B held the same data after every replicated run. All processes (pgbench,
#   capgate, two servers, Pgpool) share the machine's cores: compare runs on one machine.
#   Everything is also written as JSON to $OUT.
#
# Usage
#   benches/replication.sh [--quick]
#     --quick               smoke run: ROUNDS=1 DURATION=3 LAT_DURATION=3 BACKLOG=5000
#   Environment (defaults in brackets):
#     ROUNDS=3              TPC-B rounds; medians over rounds
#     DURATION=15           seconds per TPC-B run
#     CLIENTS=8 JOBS=2      pgbench -c / -j (TPC-B and the backlog)
#     SCALE=1               pgbench -i -s
#     TARGETS="direct sync async local pgpool"   TPC-B targets (pgpool skipped if not installed)
#     LAG_INTERVAL=0.2      seconds between /status samples during async TPC-B
#     LATENCY_MS=25         added each way on the replica link (phases 2 and 3)
#     LAT_DURATION=10       seconds of the one-client UPDATE runs
#     BACKLOG=100000        async statements queued while the link is cut
#     DRAIN_TIMEOUT=600     seconds to wait for a backlog to drain
#     SYNC_COMMIT=off       synchronous_commit on both servers
#     INSTALL=0             1: apt-get install -y pgpool2 when pgpool is missing
#     CAPGATE_BIN=target/release/capgate (default: built with `cargo build --release`
#                           every run, a no-op when up to date; capgate-link beside it)
#     OUT=target/bench/replication.json
#     PGBIN=/usr/lib/postgresql/15/bin
#     KEEP_TMP=1            keep the temp dir (logs of every server, proxy and run)
#
# Exit status: 0 if every run succeeded and the sites agreed, 1 otherwise (failed runs show
# as FAIL), 2 on setup errors.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "--quick" ]]; then
    ROUNDS=1 DURATION=3 LAT_DURATION=3 BACKLOG=5000
    shift
fi
if [[ $# -gt 0 ]]; then
    echo "usage: $0 [--quick]   (options are environment variables, see header)" >&2
    exit 2
fi

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-15}"
CLIENTS="${CLIENTS:-8}"
JOBS="${JOBS:-2}"
SCALE="${SCALE:-1}"
TARGETS_WANTED="${TARGETS:-direct sync async local pgpool}"
LAG_INTERVAL="${LAG_INTERVAL:-0.2}"
LATENCY_MS="${LATENCY_MS:-25}"
LAT_DURATION="${LAT_DURATION:-10}"
BACKLOG="${BACKLOG:-100000}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-600}"
SYNC_COMMIT="${SYNC_COMMIT:-off}"
INSTALL="${INSTALL:-0}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
OUT="${OUT:-$REPO_ROOT/target/bench/replication.json}"
KEEP_TMP="${KEEP_TMP:-0}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
LINK_BIN="$(dirname "$CAPGATE_BIN")/capgate-link"
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGSERVICE PGOPTIONS PGAPPNAME PGSSLMODE PGGSSENCMODE || true
export PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10

log() { printf '[replication.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }

for tool in "$PGBIN/initdb" "$PGBIN/pg_ctl" pgbench psql python3 runuser; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
id postgres >/dev/null 2>&1 || die "needs the 'postgres' OS user"
[[ "$BACKLOG" -ge "$CLIENTS" ]] || die "BACKLOG must be at least CLIENTS"

if [[ " $TARGETS_WANTED " == *" pgpool "* ]] && ! command -v pgpool >/dev/null; then
    if [[ "$INSTALL" == 1 ]]; then
        log "installing pgpool2 (apt-get)"
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y pgpool2; } >&2 \
            || die "apt-get install pgpool2 failed"
        # The Debian package may start its own pgpool service; this script does not need it.
        if command -v service >/dev/null; then service pgpool2 stop >/dev/null 2>&1 || true; fi
    fi
fi
TARGETS=()
for t in $TARGETS_WANTED; do
    case "$t" in
        direct | sync | async | local) TARGETS+=("$t") ;;
        pgpool)
            if command -v pgpool >/dev/null; then TARGETS+=(pgpool)
            else log "pgpool not installed: skipping the pgpool column (INSTALL=1 installs pgpool2)"; fi ;;
        *) die "unknown target $t (direct sync async local pgpool)" ;;
    esac
done

# ---------------------------------------------------------------- cleanup --
TMP=""
CAPGATE_PID=""
LINK_PID=""
SAMPLER_PID=""
PGPOOL_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n "$SAMPLER_PID" ]] && { kill -TERM "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; }
    stop_pgpool
    stop_capgate
    stop_link
    stop_postgres_named site-a
    stop_postgres_named site-b
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ temp + ports --
build_capgate_release
[[ -x "$LINK_BIN" ]] || die "$LINK_BIN is missing (cargo build --release builds it)"
TMP="$(mktemp -d /tmp/capgate-replication.XXXXXX)"
chmod 755 "$TMP"
chown postgres: "$TMP"
read -r PORT_A PORT_B CGPORT ADMINPORT PPPORT PCPPORT < <(free_ports 6)
ADMIN_URL="http://127.0.0.1:$ADMINPORT"

# A helper for /status and /metrics: sampling, waiting for a drain, reading counters.
cat >"$TMP/status.py" <<'PY'
import json, signal, socket, sys, time, urllib.request

base = sys.argv[2]

def replica():
    with urllib.request.urlopen(base + "/status", timeout=2) as r:
        return json.load(r)["replicas"][0]

def sample(interval: float, out_path: str) -> None:
    """Until SIGTERM: one JSON line per sample (t, lag, pending, state, shipping)."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t0 = nxt = time.monotonic()
    with open(out_path, "w", buffering=1) as out:
        while not stop:
            rec = {"t": round(time.monotonic() - t0, 3)}
            try:
                r = replica()
                rec.update(lag=r["lag_seconds"], pending=r["pending_rows"], state=r["state"], shipping=r["shipping"])
            except Exception as e:  # noqa: BLE001 - a failed sample is recorded, not fatal
                rec["error"] = str(e)
            out.write(json.dumps(rec) + "\n")
            nxt += interval
            time.sleep(max(0.0, nxt - time.monotonic()))

def link_command(addr: str, cmd: str) -> str:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall((cmd + "\n").encode())
        return s.makefile().readline().strip()

def drain(timeout: float, link: str | None, cmd: str | None) -> None:
    """Optionally send `cmd` to the link (time 0), then poll every 50 ms until pending_rows
    is 0; print {seconds, first_progress, pending_at_start, pending_at_progress, samples}."""
    t0 = time.monotonic()
    if link:
        answer = link_command(link, cmd)
        if answer != "ok":
            print(json.dumps({"error": f"link: {cmd} -> {answer}"}))
            sys.exit(1)
    start = progress_t = progress_pending = None
    samples = 0
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            r = replica()
        except Exception as e:  # noqa: BLE001
            last = {"error": str(e)}
            time.sleep(0.05)
            continue
        last = r
        samples += 1
        p = r["pending_rows"]
        t = time.monotonic() - t0
        if p is not None:
            if start is None:
                start = p
            if progress_t is None and p < start:
                progress_t, progress_pending = t, start
            if p == 0:
                print(json.dumps({"seconds": round(t, 3), "first_progress": None if progress_t is None else round(progress_t, 3),
                                  "pending_at_start": start, "samples": samples}))
                return
        time.sleep(0.05)
    print(json.dumps({"error": f"not drained after {timeout} s", "last": last, "pending_at_start": start}))
    sys.exit(1)

def metrics() -> None:
    """Prints `statements batches` shipped so far (sums over replicas)."""
    with urllib.request.urlopen(base + "/metrics", timeout=2) as r:
        text = r.read().decode()
    vals = {"capgate_shipped_changes_total": 0.0, "capgate_shipped_batches_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in vals:
            vals[name] += float(line.rsplit(" ", 1)[1])
    print(int(vals["capgate_shipped_changes_total"]), int(vals["capgate_shipped_batches_total"]))

def wait_field(field: str, value: str, timeout: float) -> None:
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            last = replica()
            if str(last.get(field)) == value:
                return
        except Exception as e:  # noqa: BLE001
            last = {"error": str(e)}
        time.sleep(0.1)
    print(f"{field} is not {value} after {timeout} s: {json.dumps(last)}", file=sys.stderr)
    sys.exit(1)

def field(name: str) -> None:
    print(json.dumps(replica().get(name)))

mode = sys.argv[1]
if mode == "sample":
    sample(float(sys.argv[3]), sys.argv[4])
elif mode == "drain":
    drain(float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None, sys.argv[5] if len(sys.argv) > 5 else None)
elif mode == "metrics":
    metrics()
elif mode == "wait":
    wait_field(sys.argv[3], sys.argv[4], float(sys.argv[5]))
elif mode == "field":
    field(sys.argv[3])
else:
    sys.exit(f"unknown mode {mode}")
PY
status_py() { python3 "$TMP/status.py" "$1" "$ADMIN_URL" "${@:2}"; }

# --------------------------------------------------------------- postgres --
PG_CONF=("max_connections = 300" "shared_buffers = 256MB" "synchronous_commit = $SYNC_COMMIT"
    "max_prepared_transactions = 100")
log "site A (primary) on port $PORT_A, site B (replica) on port $PORT_B"
start_postgres_named site-a "$PORT_A" "${PG_CONF[@]}"
start_postgres_named site-b "$PORT_B" "${PG_CONF[@]}"
PGVERSION="$(psql -XAtq -h 127.0.0.1 -p "$PORT_A" -U postgres -d postgres -c 'show server_version')"

q() { # port sql
    psql -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"
}

# Both sites back to freshly initialised, identical pgbench tables.
reset_data() {
    local port
    for port in "$PORT_A" "$PORT_B"; do
        pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$port" -U postgres postgres >"$TMP/pgbench-init.log" 2>&1 \
            || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i on port $port failed"; }
        # Row changes are matched by primary key (decision 0009): pgbench_history gets one,
        # on both sites and for every target alike.
        q "$port" "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY" >/dev/null
    done
}

# One line summarising a site's pgbench data.
site_digest() {
    q "$1" "select (select md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts)
        || ' ' || (select md5(string_agg(tid || ':' || tbalance, ',' order by tid)) from pgbench_tellers)
        || ' ' || (select md5(string_agg(bid || ':' || bbalance, ',' order by bid)) from pgbench_branches)
        || ' history=' || (select count(*) || '/' || coalesce(sum(delta), 0) from pgbench_history)"
}

PROBLEMS="$TMP/problems.txt"
: >"$PROBLEMS"
problem() { log "PROBLEM: $*"; echo "$*" >>"$PROBLEMS"; }

# Compares A and B after a replicated run named $1; prints yes/no.
check_sites() {
    local what=$1 a b px
    a="$(site_digest "$PORT_A")"
    b="$(site_digest "$PORT_B")"
    if [[ "$a" == "$b" ]]; then
        echo yes
    else
        problem "$what: sites differ: A: $a | B: $b"
        echo no
    fi
    for port in "$PORT_A" "$PORT_B"; do
        px="$(q "$port" "select count(*) from pg_prepared_xacts")"
        [[ "$px" == 0 ]] || problem "$what: $px prepared transaction(s) left on port $port: $(q "$port" "select string_agg(gid, ' ') from pg_prepared_xacts")"
    done
}

# ---------------------------------------------------------------- capgate --
# Writes capgate's config for mode $1 (sync|async|local) with the replica at host:port $2.
capgate_config() {
    local mode=$1 replica=$2 t
    {
        echo 'default = "local"'
        for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
            printf '\n[[table]]\nmatch = "public.%s"\nmode = "%s"\n' "$t" "$mode"
        done
    } >"$TMP/policy-$mode.toml"
    cat >"$TMP/capgate-$mode.toml" <<CONF
site = "a"
listen = "127.0.0.1:$CGPORT"
admin = "127.0.0.1:$ADMINPORT"
policy = "policy-$mode.toml"
max_connections = 1000

[primary]
url = "postgres://postgres@127.0.0.1:$PORT_A/postgres?sslmode=disable"

[[replicas]]
name = "b"
url = "postgres://postgres@$replica/postgres?sslmode=disable"
CONF
    echo "$TMP/capgate-$mode.toml"
}

# capgate in mode $1 with the replica at $2, output in $TMP/capgate-$3.log.
run_capgate() {
    local config
    config="$(capgate_config "$1" "$2")"
    "$CAPGATE_BIN" check-config --config "$config" >"$TMP/check-config.log" 2>&1 \
        || { cat "$TMP/check-config.log" >&2; die "capgate check-config failed"; }
    start_capgate_config "$config" "$CGPORT" "$TMP/capgate-$3.log"
    # /status answers once capgate is up; the shipper (async) must hold its lock and be
    # connected before a measurement means anything.
    if [[ "$1" == async ]]; then
        status_py wait shipping running 30 || { tail -30 "$TMP/capgate-$3.log" >&2; die "the async shipper is not running"; }
    else
        status_py wait state healthy 30 || { tail -30 "$TMP/capgate-$3.log" >&2; die "the replica is not healthy"; }
    fi
}

# ----------------------------------------------------------------- pgpool --
PGPOOL_VERSION=""
start_pgpool() {
    local ver clustering
    ver="$(pgpool --version 2>&1 | sed -nE 's/.*version ([0-9]+)\.([0-9]+).*/\1 \2/p' | head -1)"
    PGPOOL_VERSION="$(pgpool --version 2>&1 | head -1)"
    read -r major minor <<<"$ver"
    if (( major > 4 || (major == 4 && minor >= 2) )); then
        clustering="backend_clustering_mode = 'native_replication'"
    else
        clustering="replication_mode = on
master_slave_mode = off"
    fi
    mkdir -p "$TMP/pgpool"
    cat >"$TMP/pgpool/pgpool.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PPPORT
unix_socket_directories = '$TMP/pgpool'
pcp_listen_addresses = '127.0.0.1'
pcp_port = $PCPPORT
pcp_socket_dir = '$TMP/pgpool'
wd_ipc_socket_dir = '$TMP/pgpool'
pid_file_name = '$TMP/pgpool/pgpool.pid'
logdir = '$TMP/pgpool'
log_destination = 'stderr'
$clustering
backend_hostname0 = '127.0.0.1'
backend_port0 = $PORT_A
backend_weight0 = 1
backend_flag0 = 'DISALLOW_TO_FAILOVER'
backend_hostname1 = '${PGPOOL_B_HOST:-127.0.0.1}'
backend_port1 = ${PGPOOL_B_PORT:-$PORT_B}
backend_weight1 = 1
backend_flag1 = 'DISALLOW_TO_FAILOVER'
load_balance_mode = off
replicate_select = off
insert_lock = off
num_init_children = $(( CLIENTS + 8 ))
max_pool = 1
connection_cache = on
enable_pool_hba = off
pool_passwd = ''
health_check_period = 0
sr_check_period = 0
failover_on_backend_error = off
use_watchdog = off
memory_cache_enabled = off
CONF
    : >"$TMP/pgpool/pcp.conf"
    chown -R postgres: "$TMP/pgpool"
    runuser -u postgres -- pgpool -n -D -f "$TMP/pgpool/pgpool.conf" -F "$TMP/pgpool/pcp.conf" \
        >>"$TMP/pgpool.log" 2>&1 </dev/null &
    PGPOOL_PID=$!
    wait_accepting pgpool "$PPPORT" "$PGPOOL_PID" || { tail -30 "$TMP/pgpool.log" >&2; die "pgpool does not accept connections"; }
}

stop_pgpool() {
    [[ -n "${PGPOOL_PID:-}" ]] || return 0
    local pid=""
    [[ -s "$TMP/pgpool/pgpool.pid" ]] && pid="$(tr -cd '0-9' <"$TMP/pgpool/pgpool.pid")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid" 2>/dev/null || true   # fast shutdown
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    kill -TERM "$PGPOOL_PID" 2>/dev/null || true
    wait "$PGPOOL_PID" 2>/dev/null || true
    PGPOOL_PID=""
}

# ---------------------------------------------------------------- pgbench --
FAILED=0
RAW="$TMP/runs.tsv"      # round target tps lat failed_txns consistent drain_after_s
: >"$RAW"

# Runs pgbench (args after the log name); prints "tps lat failed" or returns 1 (the caller
# sets FAILED: this runs in a command substitution). Errors pgbench printed are recorded.
pgbench_run() {
    local name=$1; shift
    local outf="$TMP/run-$name.log"
    local rc=0
    pgbench "$@" >"$outf" 2>&1 || rc=$?
    local tps lat failed
    tps="$(sed -nE 's/^tps = ([0-9.]+) \((without initial connection time|excluding connections establishing)\).*/\1/p' "$outf" | head -1)"
    lat="$(sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "$outf" | head -1)"
    failed="$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$outf" | head -1)"
    if grep -qE 'ERROR|FATAL|aborted|error' "$outf"; then
        problem "$name: pgbench reported: $(grep -E 'ERROR|FATAL|aborted|error' "$outf" | sort | uniq -c | sort -rn | head -5 | tr '\n' ';')"
    fi
    if [[ "$rc" != 0 || -z "$tps" || -z "$lat" ]]; then
        log "$name: FAILED (exit $rc); output:"
        tail -15 "$outf" >&2
        return 1
    fi
    echo "$tps $lat ${failed:-0}"
}

TPCB=(-n -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -h 127.0.0.1 -U postgres)

run_tpcb() { # round target
    local round=$1 target=$2 port consistent=- drain=- res
    reset_data
    case "$target" in
        direct) port=$PORT_A ;;
        sync | async | local) run_capgate "$target" "127.0.0.1:$PORT_B" "$target-$round"; port=$CGPORT ;;
        pgpool) start_pgpool; port=$PPPORT ;;
    esac
    if [[ "$target" == async ]]; then
        python3 "$TMP/status.py" sample "$ADMIN_URL" "$LAG_INTERVAL" "$TMP/lag-$round.jsonl" &
        SAMPLER_PID=$!
    fi
    if res="$(pgbench_run "tpcb-$round-$target" "${TPCB[@]}" -p "$port" postgres)"; then :; else res="FAIL FAIL FAIL"; FAILED=1; fi
    if [[ "$target" == async ]]; then
        kill -TERM "$SAMPLER_PID" || true; wait "$SAMPLER_PID" || true; SAMPLER_PID=""
        local d
        if d="$(status_py drain "$DRAIN_TIMEOUT")"; then
            drain="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$d")"
        else
            problem "async round $round: backlog did not drain: $d"
        fi
    fi
    case "$target" in
        sync | async) stop_capgate; consistent="$(check_sites "tpcb $target round $round")" ;;
        local) stop_capgate ;;
        pgpool) stop_pgpool; consistent="$(check_sites "tpcb pgpool round $round")" ;;
    esac
    [[ "$consistent" == no ]] && FAILED=1
    read -r tps lat failed <<<"$res"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$tps" "$lat" "$failed" "$consistent" "$drain" >>"$RAW"
    log "round $round $target: tps=$tps lat=${lat}ms failed=$failed consistent=$consistent$([[ "$drain" == - ]] || echo " drain_after=${drain}s")"
}

read -r LOAD1 _ </proc/loadavg
if awk -v l="$LOAD1" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    log "warning: load average $LOAD1 on $(nproc) CPUs before starting; other work will skew the figures"
fi

# ------------------------------------------------------ phase 1: TPC-B --
ntargets=${#TARGETS[@]}
for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $(( ntargets - 1 ))); do
        run_tpcb "$round" "${TARGETS[$(( (i + round - 1) % ntargets ))]}"
    done
done

# ------------------------------------------- phase 2: sync latency over a slow link --
RTT_MS=$(( 2 * LATENCY_MS ))
printf '\\set aid random(1, %d)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n' \
    $(( 100000 * SCALE )) >"$TMP/update.sql"
printf 'SELECT 1;\n' >"$TMP/select1.sql"
start_link "$PORT_B"
link_cmd "latency ${LATENCY_MS}ms" >/dev/null
log "capgate-link $LINK_LISTEN -> B, ${LATENCY_MS} ms each way (control $LINK_CONTROL)"

LAT_LINK=FAIL LAT_DIRECT=FAIL LAT_SYNC=FAIL
reset_data
if r="$(pgbench_run link-rtt -n -c 1 -T 2 -f "$TMP/select1.sql" -h "${LINK_LISTEN%:*}" -p "${LINK_LISTEN##*:}" -U postgres postgres)"; then
    read -r _ LAT_LINK _ <<<"$r"
else
    FAILED=1
fi
if r="$(pgbench_run update-direct -n -c 1 -T "$LAT_DURATION" -f "$TMP/update.sql" -h 127.0.0.1 -p "$PORT_A" -U postgres postgres)"; then
    read -r _ LAT_DIRECT _ <<<"$r"
else
    FAILED=1
fi
reset_data
run_capgate sync "$LINK_LISTEN" latency
if r="$(pgbench_run update-sync -n -c 1 -T "$LAT_DURATION" -f "$TMP/update.sql" -h 127.0.0.1 -p "$CGPORT" -U postgres postgres)"; then
    read -r _ LAT_SYNC _ <<<"$r"
else
    FAILED=1
fi
stop_capgate
LAT_CONSISTENT="$(check_sites "sync latency")"
[[ "$LAT_CONSISTENT" == no ]] && FAILED=1
log "link RTT (SELECT 1 via link) ${LAT_LINK} ms; UPDATE direct ${LAT_DIRECT} ms, capgate sync ${LAT_SYNC} ms"

# ----------------------- phase 2b: over the same slow link, N statements and TPC-B vs Pgpool --
# A sync transaction of N single-row UPDATEs (one client), direct and through capgate: the
# target is capgate <= direct + 1 replica round trip whatever N. Then TPC-B with the replica
# (capgate) / the second backend (Pgpool-II native replication) behind the link.
WAN="$TMP/wan.txt"
: >"$WAN"
for n in 1 10 100; do
    {
        printf 'BEGIN;\n'
        for i in $(seq "$n"); do
            printf '\\set aid%d random(1, %d)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid%d;\n' "$i" $(( 100000 * SCALE )) "$i"
        done
        printf 'END;\n'
    } >"$TMP/tx$n.sql"
    reset_data
    d=FAIL c=FAIL
    if r="$(pgbench_run "tx$n-direct" -n -c 1 -T "$LAT_DURATION" -f "$TMP/tx$n.sql" -h 127.0.0.1 -p "$PORT_A" -U postgres postgres)"; then
        read -r _ d _ <<<"$r"
    else
        FAILED=1
    fi
    reset_data
    run_capgate sync "$LINK_LISTEN" "tx$n"
    if r="$(pgbench_run "tx$n-sync" -n -c 1 -T "$LAT_DURATION" -f "$TMP/tx$n.sql" -h 127.0.0.1 -p "$CGPORT" -U postgres postgres)"; then
        read -r _ c _ <<<"$r"
    else
        FAILED=1
    fi
    stop_capgate
    [[ "$(check_sites "tx$n sync over the link")" == no ]] && FAILED=1
    log "transaction of $n UPDATE(s): direct ${d} ms, capgate sync over the link ${c} ms (link RTT ${LAT_LINK} ms)"
    printf 'tx%s\t%s\t%s\n' "$n" "$d" "$c" >>"$WAN"
done
for target in sync pgpool; do
    reset_data
    if [[ "$target" == sync ]]; then
        run_capgate sync "$LINK_LISTEN" wan-tpcb; port=$CGPORT
    else
        [[ " ${TARGETS[*]} " == *" pgpool "* ]] || continue
        PGPOOL_B_HOST="${LINK_LISTEN%:*}" PGPOOL_B_PORT="${LINK_LISTEN##*:}" start_pgpool; port=$PPPORT
    fi
    if res="$(pgbench_run "wan-tpcb-$target" "${TPCB[@]}" -p "$port" postgres)"; then :; else res="FAIL FAIL FAIL"; FAILED=1; fi
    if [[ "$target" == sync ]]; then stop_capgate; else stop_pgpool; fi
    [[ "$(check_sites "TPC-B $target over the link")" == no ]] && FAILED=1
    read -r tps lat _ <<<"$res"
    log "TPC-B over the link ($LATENCY_MS ms each way), $target: tps=$tps lat=${lat}ms"
    printf 'wan-tpcb-%s\t%s\t%s\n' "$target" "$tps" "$lat" >>"$WAN"
done

# ------------------------------------------------- phase 3: async drain rate --
reset_data
run_capgate async "$LINK_LISTEN" drain
link_cmd "refuse on" >/dev/null
link_cmd reset >/dev/null
PER_CLIENT=$(( (BACKLOG + CLIENTS - 1) / CLIENTS ))
BACKLOG_N=$(( PER_CLIENT * CLIENTS ))
log "link cut; $BACKLOG_N async UPDATEs through capgate ($CLIENTS clients x $PER_CLIENT)"
BACKLOG_TPS=FAIL DRAIN_JSON='{"error": "not run"}' SHIPPED0="0 0" SHIPPED1="0 0" PENDING_BEFORE=null
if r="$(pgbench_run backlog -n -c "$CLIENTS" -j "$JOBS" -t "$PER_CLIENT" -f "$TMP/update.sql" -h 127.0.0.1 -p "$CGPORT" -U postgres postgres)"; then
    read -r BACKLOG_TPS _ _ <<<"$r"
else
    FAILED=1
fi
sleep 1   # let the shipper measure the backlog once more
PENDING_BEFORE="$(status_py field pending_rows)"
SHIPPED0="$(status_py metrics)"
log "pending_rows before restore: $PENDING_BEFORE; restoring the link (latency kept)"
if DRAIN_JSON="$(status_py drain "$DRAIN_TIMEOUT" "$LINK_CONTROL" "refuse off")"; then :; else
    problem "drain: $DRAIN_JSON"
    FAILED=1
fi
SHIPPED1="$(status_py metrics)"
stop_capgate
DRAIN_CONSISTENT="$(check_sites "async drain")"
[[ "$DRAIN_CONSISTENT" == no ]] && FAILED=1
stop_link

# capgate's own complaints, per log file (the drain phase cuts the link on purpose, so its
# connection warnings are expected and only noted).
for f in "$TMP"/capgate-*.log; do
    n="$(grep -cE ' (WARN|ERROR) ' "$f" || true)"
    if [[ "$n" -gt 0 ]]; then
        expected=""
        [[ "$f" == */capgate-drain.log ]] && expected=" (expected while the link is cut)"
        problem "$(basename "$f"): $n WARN/ERROR line(s)$expected, e.g.: $(grep -E ' (WARN|ERROR) ' "$f" \
            | sed -E 's/^[^ ]+ +//; s/\x1b\[[0-9;]*m//g' | sort | uniq -c | sort -rn | head -3 | sed -E "s/^ +//" | tr '\n' ';')"
    fi
done

# ------------------------------------------------------------------ report --
mkdir -p "$(dirname "$OUT")"
export ROUNDS DURATION CLIENTS JOBS SCALE LATENCY_MS RTT_MS LAT_DURATION BACKLOG_N PGVERSION PGPOOL_VERSION \
    CAPGATE_BIN SYNC_COMMIT LAT_LINK LAT_DIRECT LAT_SYNC LAT_CONSISTENT BACKLOG_TPS PENDING_BEFORE DRAIN_JSON \
    SHIPPED0 SHIPPED1 DRAIN_CONSISTENT LAG_INTERVAL
python3 - "$RAW" "$OUT" "$TMP" "$PROBLEMS" "${TARGETS[*]}" <<'PY'
import glob, json, os, statistics, sys, time

raw_path, out_path, tmp, problems_path, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split()
E = os.environ
num = lambda v: None if v in ("FAIL", "-", "", "null", None) else float(v)

runs: dict[str, list[dict]] = {}
for line in open(raw_path):
    rnd, target, tps, lat, failed, consistent, drain = line.rstrip("\n").split("\t")
    runs.setdefault(target, []).append({"round": int(rnd), "tps": num(tps), "latency_ms": num(lat),
                                        "failed_transactions": num(failed), "consistent": None if consistent == "-" else consistent == "yes",
                                        "drain_after_load_s": num(drain)})

def med(rs, k):
    vs = [r[k] for r in rs]
    return None if not vs or any(v is None for v in vs) else round(statistics.median(vs), 3)

tpcb = {t: {"tps_median": med(rs, "tps"), "latency_ms_median": med(rs, "latency_ms"),
            "consistent": None if all(r["consistent"] is None for r in rs) else all(r["consistent"] for r in rs),
            "runs": rs} for t, rs in runs.items()}

def ratio(a, b):
    x, y = tpcb.get(a, {}).get("tps_median"), tpcb.get(b, {}).get("tps_median")
    return None if x is None or not y else round(x / y, 3)

# Async lag samples over all rounds.
lags, unknown, errors = [], 0, 0
for f in sorted(glob.glob(os.path.join(tmp, "lag-*.jsonl"))):
    for line in open(f):
        s = json.loads(line)
        if "error" in s:
            errors += 1
        elif s.get("lag") is None:
            unknown += 1
        else:
            lags.append(s["lag"])

def pct(vs, p):
    if not vs:
        return None
    vs = sorted(vs)
    return round(vs[min(len(vs) - 1, max(0, int(round(p / 100 * len(vs) + 0.5)) - 1))], 3)

lag = {"samples": len(lags), "unknown_samples": unknown, "failed_samples": errors,
       "p50_s": pct(lags, 50), "p99_s": pct(lags, 99), "max_s": round(max(lags), 3) if lags else None}

rtt_s = int(E["RTT_MS"]) / 1000
lat_direct, lat_sync = num(E["LAT_DIRECT"]), num(E["LAT_SYNC"])
target_ms = None if lat_direct is None else round(1.2 * int(E["RTT_MS"]) + lat_direct, 3)
latency = {"added_each_way_ms": int(E["LATENCY_MS"]), "rtt_ms": int(E["RTT_MS"]), "link_select1_ms": num(E["LAT_LINK"]),
           "update_direct_ms": lat_direct, "update_capgate_sync_ms": lat_sync, "target_ms": target_ms,
           "met": None if lat_sync is None or target_ms is None else lat_sync <= target_ms,
           "consistent": E["LAT_CONSISTENT"] == "yes"}

d = json.loads(E["DRAIN_JSON"])
s0, b0 = map(int, E["SHIPPED0"].split())
s1, b1 = map(int, E["SHIPPED1"].split())
n = int(E["BACKLOG_N"])
drain = {"statements": n, "backlog_tps": num(E["BACKLOG_TPS"]), "pending_before_restore": json.loads(E["PENDING_BEFORE"]),
         "rtt_ms": int(E["RTT_MS"]), "consistent": E["DRAIN_CONSISTENT"] == "yes",
         "shipped_statements": s1 - s0, "shipped_batches": b1 - b0,
         "statements_per_batch": round((s1 - s0) / (b1 - b0), 1) if b1 > b0 else None}
if "error" in d:
    drain["error"] = d
else:
    drain["seconds_from_restore"] = d["seconds"]
    fp = d["first_progress"]
    drain["first_progress_s"] = fp
    # The rate counts from the first progress seen (excludes the reconnect backoff);
    # /status is measured about every 250 ms, so short drains are coarse.
    span = d["seconds"] - fp if fp is not None and d["seconds"] > fp else d["seconds"]
    drain["drain_seconds"] = round(span, 3)
    drain["statements_per_second"] = round(n / span, 1) if span > 0 else None
    drain["statements_per_round_trip"] = round(n / (span / rtt_s), 1) if span > 0 else None

problems = [l.rstrip("\n") for l in open(problems_path) if l.strip()]
doc = {
    "benchmark": "replication",
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "params": {k.lower(): E[k] for k in ("ROUNDS", "DURATION", "CLIENTS", "JOBS", "SCALE", "SYNC_COMMIT", "LAG_INTERVAL", "LAT_DURATION")},
    "env": {"postgres": E["PGVERSION"], "pgpool": E.get("PGPOOL_VERSION") or None, "capgate_bin": E["CAPGATE_BIN"], "nproc": os.cpu_count()},
    "targets": targets,
    "tpcb": tpcb,
    "ratios": {"sync_direct": ratio("sync", "direct"), "sync_pgpool": ratio("sync", "pgpool"),
               "async_direct": ratio("async", "direct"), "pgpool_direct": ratio("pgpool", "direct"),
               "async_local": ratio("async", "local"), "local_direct": ratio("local", "direct")},
    "async_lag": lag,
    "sync_latency": latency,
    "async_drain": drain,
    "problems": problems,
}
with open(out_path, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

def fmt(v, w, prec):
    return f"{'-':>{w}}" if v is None else f"{v:>{w}.{prec}f}"

p = doc["params"]
print(f"\nTPC-B (pgbench -c {p['clients']} -j {p['jobs']} -T {p['duration']} -n, simple protocol, scale {p['scale']}, "
      f"{p['rounds']} round(s), synchronous_commit={p['sync_commit']}); medians")
print(f"{'target':<8} {'tps':>10} {'lat ms':>8} {'sites agree':>11}")
print("-" * 40)
for t in ("direct", "sync", "async", "local", "pgpool"):
    if t in tpcb:
        r = tpcb[t]
        c = "-" if r["consistent"] is None else ("yes" if r["consistent"] else "NO")
        print(f"{t:<8} {fmt(r['tps_median'], 10, 1)} {fmt(r['latency_ms_median'], 8, 3)} {c:>11}")
    else:
        print(f"{t:<8} {'not run':>10}")
rt = doc["ratios"]
print(f"ratios: sync/direct {fmt(rt['sync_direct'], 0, 3).strip()}  sync/pgpool {fmt(rt['sync_pgpool'], 0, 3).strip()}  "
      f"async/direct {fmt(rt['async_direct'], 0, 3).strip()}  async/local {fmt(rt['async_local'], 0, 3).strip()}  "
      f"local/direct {fmt(rt['local_direct'], 0, 3).strip()}  pgpool/direct {fmt(rt['pgpool_direct'], 0, 3).strip()}")
print(f"async replica lag during TPC-B (/status every {p['lag_interval']} s, {lag['samples']} samples"
      f"{', %d unknown' % unknown if unknown else ''}{', %d failed' % errors if errors else ''}): "
      f"p50 {lag['p50_s']} s, p99 {lag['p99_s']} s, max {lag['max_s']} s")
drains = [r["drain_after_load_s"] for r in runs.get("async", []) if r["drain_after_load_s"] is not None]
if drains:
    print(f"async tail after each TPC-B run drained in: {', '.join(f'{x:.2f}' for x in drains)} s")

L = latency
print(f"\nsync autocommit UPDATE, 1 client, {p['lat_duration']} s, {L['added_each_way_ms']} ms each way on the replica link "
      f"(RTT {L['rtt_ms']} ms; SELECT 1 through the link: {L['link_select1_ms']} ms)")
print(f"  direct to A          {fmt(lat_direct, 8, 3)} ms")
print(f"  capgate sync         {fmt(lat_sync, 8, 3)} ms")
print(f"  target: <= 1.2 x RTT + direct = 1.2 x {L['rtt_ms']} + {fmt(lat_direct, 0, 3).strip()} = {fmt(target_ms, 0, 3).strip()} ms"
      f" -> {'-' if L['met'] is None else ('met' if L['met'] else 'NOT met')}; sites agree: {'yes' if L['consistent'] else 'NO'}")

D = drain
print(f"\nasync drain: {D['statements']} single-row UPDATEs queued with the link cut "
      f"({fmt(D['backlog_tps'], 0, 1).strip()} tps through capgate; pending_rows before restore: {D['pending_before_restore']}), "
      f"{L['added_each_way_ms']} ms each way after restore")
if "error" in D:
    print(f"  FAILED: {D['error']}")
else:
    print(f"  pending_rows = 0 after {D['seconds_from_restore']:.2f} s from restore "
          f"(first progress at {D['first_progress_s']} s); drain {D['drain_seconds']:.2f} s")
    print(f"  {fmt(D['statements_per_second'], 0, 1).strip()} statements/s; "
          f"statements per round trip = {D['statements']} / ({D['drain_seconds']:.2f} / {rtt_s}) = "
          f"{fmt(D['statements_per_round_trip'], 0, 1).strip()}")
print(f"  /metrics: {D['shipped_statements']} statements in {D['shipped_batches']} batches "
      f"({D['statements_per_batch']} per batch); sites agree: {'yes' if D['consistent'] else 'NO'}")

if problems:
    print("\nproblems seen:")
    for pr in problems:
        print(f"  - {pr}")
print(f"\nJSON: {out_path}")
PY

if [[ -s "$WAN" ]]; then
    echo
    echo "over the ${LATENCY_MS} ms-each-way link (phase 2b; link RTT ${LAT_LINK} ms):"
    sed 's/^/  /' "$WAN"
fi
exit "$FAILED"

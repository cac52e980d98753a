#!/usr/bin/env bash
# benches/pgbench.sh — end-to-end throughput/latency of capgate vs a direct
# connection vs PgBouncer (session mode), measured side by side in one run.
#
# What it does
#   * starts a throwaway PostgreSQL 15 (own temp dir, free loopback port,
#     max_connections=300, shared_buffers=256MB, trust auth on 127.0.0.1,
#     synchronous_commit=off so TPC-B is CPU-bound rather than fsync-bound and
#     proxy overhead is visible), then `pgbench -i -s $SCALE`;
#   * starts PgBouncer 1.x in pool_mode=session on a free port (run as the
#     postgres OS user, because pgbouncer refuses to run as root);
#   * starts capgate (`capgate run --config FILE`) with a generated config that
#     points its [primary] at the throwaway server;
#   * for each round, workload (-S select-only, then default TPC-B) and
#     protocol mode (-M), runs pgbench for $DURATION s against the three
#     targets one after another. The order of the three is rotated every round
#     (round 1: direct capgate pgbouncer, round 2: capgate pgbouncer direct,
#     ...) so warm-up and drift affect all targets alike. Before every TPC-B
#     run the tables are vacuumed and pgbench_history truncated over a direct
#     connection, so every target starts from the same state (pgbench -n).
#
# How to read the output
#   One row per (workload, mode): median TPS over the rounds and the median of
#   pgbench's "latency average" (ms) for each target, then ratios of median
#   TPS: cg/direct (1.000 = no overhead; 0.900 = capgate delivers 90 % of a
#   direct connection's throughput), cg/pgb (>1 = faster than PgBouncer) and
#   pgb/direct (the reference cost of a well-known proxy on this machine).
#   TPS excludes connection setup ("tps = N (without initial connection time)").
#   CPU columns: the proxy process's own CPU (utime + stime of every thread, from
#   /proc/PID/stat, sampled just before and after each pgbench run) divided by
#   the transactions pgbench processed, in microseconds per transaction (µs/tx;
#   lower is better), for capgate and PgBouncer; cg/pgb cpu < 1 means capgate
#   spends less CPU per transaction than PgBouncer. This is far steadier than
#   TPS on a shared machine: other work slows the run but hardly changes what
#   each transaction costs the proxy. `machine µs/tx` is every CPU's busy time
#   (from /proc/stat) over the same run, i.e. pgbench + proxy + server + noise.
#   All processes share the same cores (pgbench, proxy and server), so ratios
#   on a 2-core box include CPU contention; compare runs on the same machine.
#   The same data, plus every individual run, is written as JSON to $OUT.
#
# Usage
#   benches/pgbench.sh [--quick]
#     --quick                 smoke run: ROUNDS=1 DURATION=3 WARMUP=1
#   Environment (defaults in brackets):
#     ROUNDS=3                rounds; medians are taken over rounds
#     DURATION=10             seconds per pgbench run
#     CLIENTS=8               pgbench -c
#     JOBS=2                  pgbench -j
#     MODES="simple prepared" space-separated pgbench -M modes, e.g.
#                             MODES="simple extended prepared"
#     SCALE=10                pgbench -i -s scale factor
#     WORKLOADS="select tpcb" which workloads to run
#     WARMUP=3                seconds of untimed -S warm-up per target (0 = none)
#     CAPGATE_BIN=target/release/capgate (relative to the repo root; built
#                             with `cargo build --release` if missing).
#                             CAPGATE_BIN=none skips the capgate column
#                             (direct vs pgbouncer only).
#     OUT=target/bench/pgbench.json
#     PGBIN=/usr/lib/postgresql/15/bin
#     KEEP_TMP=1              keep the temp dir (logs) after exit
#     CAPGATE_WORKERS=        capgate's `workers` (session worker threads; default:
#                             capgate's own, one per CPU)
#     UPSTREAM=tcp            how capgate and PgBouncer reach the server: tcp
#                             (127.0.0.1) or unix (the server's socket directory);
#                             pgbench itself always connects over TCP
#
# Exit status: 0 if every pgbench run succeeded, 1 if any run failed (failed
# runs show as FAIL in the table and null in the JSON), 2 on setup errors.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "--quick" ]]; then
    ROUNDS=1 DURATION=3 WARMUP=1
    shift
fi
if [[ $# -gt 0 ]]; then
    echo "usage: $0 [--quick]   (options are environment variables, see header)" >&2
    exit 2
fi

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-8}"
JOBS="${JOBS:-2}"
MODES="${MODES:-simple prepared}"
SCALE="${SCALE:-10}"
WORKLOADS="${WORKLOADS:-select tpcb}"
WARMUP="${WARMUP:-3}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
OUT="${OUT:-$REPO_ROOT/target/bench/pgbench.json}"
KEEP_TMP="${KEEP_TMP:-0}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
# Everything talks to explicit hosts/ports; do not let the caller's libpq
# environment leak in. SSL/GSS negotiation off for every target alike.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGSERVICE PGOPTIONS PGAPPNAME PGSSLMODE PGGSSENCMODE || true
export PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10

log() { printf '[pgbench.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }

for tool in "$PGBIN/initdb" "$PGBIN/pg_ctl" pgbench psql python3 runuser; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
command -v pgbouncer >/dev/null || die "pgbouncer not installed (apt-get install pgbouncer)"
id postgres >/dev/null 2>&1 || die "needs the 'postgres' OS user"

# ---------------------------------------------------------------- cleanup --
TMP=""
CAPGATE_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$TMP" && -s "$TMP/pgbouncer.pid" ]]; then
        local bpid
        bpid="$(cat "$TMP/pgbouncer.pid")"
        kill -TERM "$bpid" 2>/dev/null   # SIGTERM = immediate shutdown
        for _ in $(seq 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$bpid" 2>/dev/null
    fi
    stop_capgate_and_postgres
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- capgate --
[[ "$CAPGATE_BIN" == none ]] || ensure_capgate_bin

# ------------------------------------------------------------ temp + ports --
TMP="$(mktemp -d /tmp/capgate-pgbench.XXXXXX)"
case "${UPSTREAM:-tcp}" in
    tcp) UPSTREAM_HOST=127.0.0.1; UPSTREAM_URL_HOST=127.0.0.1 ;;
    unix) UPSTREAM_HOST="$TMP"; UPSTREAM_URL_HOST="${TMP//\//%2F}" ;;
    *) echo "UPSTREAM must be tcp or unix" >&2; exit 2 ;;
esac
chmod 755 "$TMP"
chown postgres: "$TMP"
# Three distinct free loopback ports: all sockets are held open at once.
read -r PGPORT CGPORT PBPORT < <(free_ports 3)

# -------------------------------------------------------------- postgres --
log "initdb in $TMP/pgdata (port $PGPORT)"
start_postgres "$PGPORT" "max_connections = 300" "shared_buffers = 256MB" "synchronous_commit = off"
PGVERSION="$(psql -XAtq -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c 'show server_version')"

log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$TMP/pgbench-init.log" 2>&1 \
    || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ------------------------------------------------------------- pgbouncer --
POOL_SIZE=$(( CLIENTS + 10 ))
cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
postgres = host=$UPSTREAM_HOST port=$PGPORT dbname=postgres user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PBPORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = session
default_pool_size = $POOL_SIZE
max_client_conn = 2000
max_db_connections = 0
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
echo '"postgres" ""' >"$TMP/userlist.txt"
chown postgres: "$TMP/pgbouncer.ini" "$TMP/userlist.txt"
log "pgbouncer on port $PBPORT"
runuser -u postgres -- pgbouncer -d "$TMP/pgbouncer.ini" >"$TMP/pgbouncer.out" 2>&1 \
    || { cat "$TMP/pgbouncer.out" "$TMP/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }
PGBOUNCER_VERSION="$(pgbouncer --version | head -1)"

wait_accepting pgbouncer "$PBPORT" || { tail -20 "$TMP/pgbouncer.log" >&2; die "pgbouncer does not accept connections"; }

# --------------------------------------------------------------- capgate --
TARGETS=(direct)
declare -A PORT=([direct]=$PGPORT [pgbouncer]=$PBPORT)
if [[ "$CAPGATE_BIN" != none ]]; then
    start_capgate "$CGPORT" "$UPSTREAM_URL_HOST" "$PGPORT"
    TARGETS+=(capgate)
    PORT[capgate]=$CGPORT
fi
TARGETS+=(pgbouncer)

# ------------------------------------------------------------ benchmark --
read -r LOAD1 _ </proc/loadavg
if awk -v l="$LOAD1" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    log "warning: load average $LOAD1 on $(nproc) CPUs before starting; other work will skew the figures"
fi
RAW="$TMP/runs.tsv"
: >"$RAW"
FAILED=0

CLK_TCK="$(getconf CLK_TCK)"
# The process whose CPU a target costs: capgate's or PgBouncer's; none for direct.
proxy_pid() {
    case "$1" in
        capgate) echo "$CAPGATE_PID" ;;
        pgbouncer) cat "$TMP/pgbouncer.pid" ;;
        *) echo "" ;;
    esac
}
# utime + stime of every thread of process $1, in clock ticks (0 without a pid).
proc_cpu_ticks() {
    [[ -n "$1" ]] || { echo 0; return; }
    # Fields after the parenthesised command name (which may contain spaces): utime is the
    # 12th and stime the 13th of them (14 and 15 of the whole line).
    sed -E 's/^.*\) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
# Context switches (voluntary + involuntary) of every thread of process $1 (0 without a pid).
proc_switches() {
    [[ -n "$1" ]] || { echo 0; return; }
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}
# Busy ticks of the whole machine (all CPUs, everything but idle and iowait).
machine_busy_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

prepare_tpcb() {
    psql -XAtq -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres >/dev/null <<'SQL'
vacuum pgbench_branches;
vacuum pgbench_tellers;
truncate pgbench_history;
SQL
}

run_pgbench() { # round workload mode target
    local round=$1 workload=$2 mode=$3 target=$4
    local outf="$TMP/run-$round-$workload-$mode-$target.log"
    local wl_args=()
    [[ "$workload" == select ]] && wl_args=(-S)
    [[ "$workload" == tpcb ]] && prepare_tpcb
    local pid cpu0 cpu1 busy0 busy1 cs0 cs1
    pid="$(proxy_pid "$target")"
    cs0="$(proc_switches "$pid")"
    cpu0="$(proc_cpu_ticks "$pid")"
    busy0="$(machine_busy_ticks)"
    if pgbench -n "${wl_args[@]}" -M "$mode" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
            -h 127.0.0.1 -p "${PORT[$target]}" -U postgres postgres >"$outf" 2>&1; then
        cpu1="$(proc_cpu_ticks "$pid")"
        busy1="$(machine_busy_ticks)"
        cs1="$(proc_switches "$pid")"
        local tps lat txs cpu_us machine_us
        tps="$(sed -nE 's/^tps = ([0-9.]+) \((without initial connection time|excluding connections establishing)\).*/\1/p' "$outf" | head -1)"
        lat="$(sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "$outf" | head -1)"
        txs="$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$outf" | head -1)"
        if [[ -n "$tps" && -n "$lat" && -n "$txs" && "$txs" -gt 0 ]]; then
            cpu_us=-
            [[ -n "$pid" ]] && cpu_us="$(awk -v a="$cpu0" -v b="$cpu1" -v n="$txs" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')"
            machine_us="$(awk -v a="$busy0" -v b="$busy1" -v n="$txs" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$workload" "$mode" "$target" "$tps" "$lat" "$cpu_us" "$machine_us" >>"$RAW"
            local switches
            switches="$(awk -v a="$cs0" -v b="$cs1" -v n="$txs" 'BEGIN { printf "%.2f", (b - a) / n }')"
            log "round $round $workload -M $mode $target: tps=$tps lat=${lat}ms proxy_cpu=${cpu_us}us/tx machine=${machine_us}us/tx proxy_switches=${switches}/tx"
            return 0
        fi
    fi
    FAILED=1
    printf '%s\t%s\t%s\t%s\tFAIL\tFAIL\t-\t-\n' "$round" "$workload" "$mode" "$target" >>"$RAW"
    log "round $round $workload -M $mode $target: FAILED; output:"
    tail -15 "$outf" >&2
}

if [[ "$WARMUP" -gt 0 ]]; then
    for target in "${TARGETS[@]}"; do
        log "warm-up $target (${WARMUP}s -S)"
        pgbench -n -S -c "$CLIENTS" -j "$JOBS" -T "$WARMUP" -h 127.0.0.1 -p "${PORT[$target]}" \
            -U postgres postgres >"$TMP/warmup-$target.log" 2>&1 \
            || log "warm-up against $target failed: $(tail -3 "$TMP/warmup-$target.log")"
    done
fi

ntargets=${#TARGETS[@]}
for round in $(seq "$ROUNDS"); do
    for workload in $WORKLOADS; do
        for mode in $MODES; do
            for i in $(seq 0 $(( ntargets - 1 ))); do
                target="${TARGETS[$(( (i + round - 1) % ntargets ))]}"
                run_pgbench "$round" "$workload" "$mode" "$target"
            done
        done
    done
done

# ------------------------------------------------------------- report --
mkdir -p "$(dirname "$OUT")"
export ROUNDS DURATION CLIENTS JOBS MODES SCALE WORKLOADS PGVERSION PGBOUNCER_VERSION CAPGATE_BIN
python3 - "$RAW" "$OUT" "${TARGETS[*]}" <<'PY'
import json, os, statistics, sys, time

raw_path, out_path, targets = sys.argv[1], sys.argv[2], sys.argv[3].split()
runs: dict[tuple[str, str, str], list[tuple[float, float, float | None, float] | None]] = {}
for line in open(raw_path):
    rnd, wl, mode, target, tps, lat, cpu, machine = line.rstrip("\n").split("\t")
    runs.setdefault((wl, mode, target), []).append(
        None if tps == "FAIL" else (float(tps), float(lat), None if cpu == "-" else float(cpu), float(machine)))

WL_NAME = {"select": "select-only (-S)", "tpcb": "tpc-b"}
workloads = os.environ["WORKLOADS"].split()
modes = os.environ["MODES"].split()

def summary(wl: str, mode: str, target: str) -> dict | None:
    rs = runs.get((wl, mode, target), [])
    if not rs:
        return None
    ok = [r for r in rs if r is not None]
    whole = len(ok) == len(rs)
    cpus = [r[2] for r in ok if r[2] is not None]
    return {
        "tps_median": round(statistics.median(r[0] for r in ok), 3) if whole else None,
        "latency_ms_median": round(statistics.median(r[1] for r in ok), 3) if whole else None,
        "proxy_cpu_us_per_tx_median": round(statistics.median(cpus), 2) if whole and cpus and len(cpus) == len(ok) else None,
        "machine_cpu_us_per_tx_median": round(statistics.median(r[3] for r in ok), 2) if whole else None,
        "tps_runs": [r[0] if r else None for r in rs],
        "latency_ms_runs": [r[1] if r else None for r in rs],
        "proxy_cpu_us_per_tx_runs": [r[2] if r else None for r in rs],
        "machine_cpu_us_per_tx_runs": [r[3] if r else None for r in rs],
    }

def ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or a["tps_median"] is None or b["tps_median"] is None or not b["tps_median"]:
        return None
    return round(a["tps_median"] / b["tps_median"], 3)

def cpu_ratio(a: dict | None, b: dict | None) -> float | None:
    k = "proxy_cpu_us_per_tx_median"
    if not a or not b or a[k] is None or not b[k]:
        return None
    return round(a[k] / b[k], 3)

results = []
for wl in workloads:
    for mode in modes:
        s = {t: summary(wl, mode, t) for t in ("direct", "capgate", "pgbouncer")}
        results.append({
            "workload": WL_NAME.get(wl, wl), "mode": mode, **s,
            "ratios": {
                "capgate_pgbouncer_cpu_per_tx": cpu_ratio(s["capgate"], s["pgbouncer"]),
                "capgate_direct": ratio(s["capgate"], s["direct"]),
                "capgate_pgbouncer": ratio(s["capgate"], s["pgbouncer"]),
                "pgbouncer_direct": ratio(s["pgbouncer"], s["direct"]),
            },
        })

doc = {
    "benchmark": "pgbench",
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "params": {k.lower(): os.environ[k] for k in ("ROUNDS", "DURATION", "CLIENTS", "JOBS", "SCALE")},
    "modes": modes,
    "targets": targets,
    "env": {
        "postgres": os.environ["PGVERSION"],
        "pgbouncer": os.environ["PGBOUNCER_VERSION"],
        "capgate_bin": None if os.environ["CAPGATE_BIN"] == "none" else os.environ["CAPGATE_BIN"],
        "nproc": os.cpu_count(),
    },
    "results": results,
}
for k in ("rounds", "duration", "clients", "jobs", "scale"):
    doc["params"][k] = int(doc["params"][k])
with open(out_path, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

def fmt(v: float | None, w: int, prec: int) -> str:
    return f"{'-':>{w}}" if v is None else f"{v:>{w}.{prec}f}"

def cell(s: dict | None) -> str:
    if s is None:
        return f"{'-':>10} {'-':>8}"
    if s["tps_median"] is None:
        return f"{'FAIL':>10} {'FAIL':>8}"
    return fmt(s["tps_median"], 10, 1) + " " + fmt(s["latency_ms_median"], 8, 3)

p = doc["params"]
print(f"\npgbench: {p['clients']} clients, -j {p['jobs']}, {p['duration']} s x {p['rounds']} round(s), "
      f"scale {p['scale']}; median TPS / median mean latency (ms)")
hdr = (f"{'workload':<17} {'mode':<9} {'direct tps':>10} {'lat ms':>8} {'capgate tps':>11} {'lat ms':>8} "
       f"{'pgbouncer tps':>13} {'lat ms':>8} {'cg/direct':>9} {'cg/pgb':>7} {'pgb/direct':>10}")
print(hdr)
print("-" * len(hdr))
for r in results:
    c = cell(r["capgate"])
    b = cell(r["pgbouncer"])
    print(f"{r['workload']:<17} {r['mode']:<9} {cell(r['direct'])} {c[:10]:>11}{c[10:]} {b[:10]:>13}{b[10:]} "
          f"{fmt(r['ratios']['capgate_direct'], 9, 3)} {fmt(r['ratios']['capgate_pgbouncer'], 7, 3)} "
          f"{fmt(r['ratios']['pgbouncer_direct'], 10, 3)}")
print(f"\nproxy CPU per transaction (utime+stime from /proc, median µs/tx) and the whole machine's busy CPU per transaction")
hdr = (f"{'workload':<17} {'mode':<9} {'capgate µs/tx':>13} {'pgbouncer µs/tx':>15} {'cg/pgb cpu':>10} "
       f"{'machine: direct':>15} {'capgate':>8} {'pgbouncer':>9}")
print(hdr)
print("-" * len(hdr))
for r in results:
    def m(t: str, k: str) -> float | None:
        return r[t][k] if r[t] else None
    print(f"{r['workload']:<17} {r['mode']:<9} {fmt(m('capgate', 'proxy_cpu_us_per_tx_median'), 13, 2)} "
          f"{fmt(m('pgbouncer', 'proxy_cpu_us_per_tx_median'), 15, 2)} {fmt(r['ratios']['capgate_pgbouncer_cpu_per_tx'], 10, 3)} "
          f"{fmt(m('direct', 'machine_cpu_us_per_tx_median'), 15, 1)} {fmt(m('capgate', 'machine_cpu_us_per_tx_median'), 8, 1)} "
          f"{fmt(m('pgbouncer', 'machine_cpu_us_per_tx_median'), 9, 1)}")
print(f"\nJSON: {out_path}")
PY

exit "$FAILED"

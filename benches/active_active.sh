#!/usr/bin/env bash
# benches/active_active.sh — two sites that both take writes (issue 16's target: async TPC-B at
# both sites at once, each site ≥ 0.8 × what it reaches alone; replica lag p99 < 1 s both ways).
#
# What it does, in one run on this machine
#   * starts two throwaway PostgreSQL 15 servers, site "east" and site "west"
#     (synchronous_commit = off as in the other benches), `pgbench -i -s $SCALE` on both
#     (identical tables) and a uuid primary key on pgbench_history (rows are matched by key;
#     a uuid cannot collide between sites, a shared sequence would);
#   * starts capgate at each site (one capgate per site, its primary the site's server, the
#     other site a replica with `takes_writes = true`), the four pgbench tables `async`; both
#     sites hold the same rows, so each shipper takes them in without a copy (decision 0028);
#   * TPC-B where each site writes its own branches (a custom script: site east branches
#     1..SCALE/2, west the rest — an application that partitions its rows by site, so the
#     figures measure replication, not conflicts): -c $CLIENTS -j $JOBS -T $DURATION, simple
#     protocol, through each site's capgate. Per round, in rotated order:
#       east-alone   only east runs (west's capgate idle but replicating),
#       west-alone   only west runs,
#       both         east and west at once;
#     /status of both capgates is sampled every $LAG_INTERVAL s during the runs
#     (replicas[0].lag_seconds: how far behind that site's changes are at the other), and
#     after each run the script waits until both queues are empty before the next one.
#   * at the end the sites are compared (md5 of accounts, tellers, branches, history count/sum)
#     and the conflicts logged on each site are counted (expected 0: the rows are disjoint).
#
# How to read the output: median TPS per site alone and in `both`, the ratio both/alone per
# site (target ≥ 0.8), the sum of both sites' TPS against the alone figures, and lag p50/p99/
# max per direction during the `both` runs. Every process (two servers, two capgates, two
# pgbench) shares this machine's cores: a site alone has the whole machine, two sites at once
# share it, so on a 2-core machine the per-site ratio is bounded by CPU, not by capgate —
# capgate's CPU per transaction (utime + stime from /proc) is printed to separate the two.
# So is each site's whole CPU per transaction (its server with every backend, its capgate, its
# pgbench): other work on the machine (builds, tests) takes CPU time from the runs unevenly —
# a site alone leaves the other CPU idle for it, `both` does not — so on a shared machine the
# ratio of these (alone ÷ both) is the steadier estimate of both ÷ alone.
#
# PIN=1 (the default on a machine with two or more CPUs) gives each site a CPU of its own —
# its server (and every backend), its capgate and its pgbench on CPU 0 (east) or CPU 1
# (west) — as two data centres would have their own machines: a site alone then has one
# CPU, not the whole machine, and the `both` figures show what replicating the other site's
# writes costs a site. PIN=0 lets every process run anywhere.
#
# Usage: benches/active_active.sh   (environment: ROUNDS=3 DURATION=15 CLIENTS=4 JOBS=2
#        SCALE=2 LAG_INTERVAL=0.2 PIN, CAPGATE_BIN (default: the release build, built
#        first), KEEP_TMP=1 keeps the logs)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-15}"
CLIENTS="${CLIENTS:-4}"
JOBS="${JOBS:-2}"
SCALE="${SCALE:-2}"
LAG_INTERVAL="${LAG_INTERVAL:-0.2}"
PIN="${PIN:-$([[ $(nproc) -ge 2 ]] && echo 1 || echo 0)}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
unset PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD PGOPTIONS || true
export PGSSLMODE=disable PGCONNECT_TIMEOUT=10
log() { printf '[active_active %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
[[ "$SCALE" -ge 2 ]] || die "SCALE must be at least 2 (each site writes its own branches)"

TMP="$(mktemp -d /tmp/capgate-active-active.XXXXXX)"
chmod 755 "$TMP"
chown postgres: "$TMP"
declare -A CG_PID=()
SAMPLERS=()
cleanup() {
    set +e
    for pid in "${SAMPLERS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for site in east west; do CAPGATE_PID="${CG_PID[$site]:-}"; stop_capgate; done
    for site in east west; do stop_postgres_named "$site"; done
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT

build_capgate_release
read -r PG_east PG_west CG_east CG_west AD_east AD_west < <(free_ports 6)
declare -A PG=([east]=$PG_east [west]=$PG_west) CG=([east]=$CG_east [west]=$CG_west) AD=([east]=$AD_east [west]=$AD_west)
declare -A PEER=([east]=west [west]=east) CPU=([east]=0 [west]=1)
# Runs the rest of the command line on the site's CPU (PIN=1), or anywhere.
on_site() { local site=$1; shift; if [[ "$PIN" == 1 ]]; then taskset -c "${CPU[$site]}" "$@"; else "$@"; fi; }
# What this shell starts next (servers, capgate) runs on the site's CPU (PIN=1).
pin_shell() { [[ "$PIN" != 1 ]] || taskset -cp "${CPU[$1]}" $$ >/dev/null; }
q() { psql -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"; }

TABLES=(pgbench_accounts pgbench_branches pgbench_tellers pgbench_history)
for site in east west; do
    pin_shell "$site"
    start_postgres_named "$site" "${PG[$site]}" "max_connections = 200" "shared_buffers = 256MB" \
        "synchronous_commit = off" "max_prepared_transactions = 100"
    pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "${PG[$site]}" -U postgres postgres >"$TMP/init-$site.log" 2>&1 \
        || { cat "$TMP/init-$site.log" >&2; die "pgbench -i at $site failed"; }
    q "${PG[$site]}" "ALTER TABLE pgbench_history ADD COLUMN hid uuid DEFAULT gen_random_uuid() PRIMARY KEY" >/dev/null
done

# The policy (the same file at both sites) and each site's capgate.
{
    echo 'default = "local"'
    for t in "${TABLES[@]}"; do printf '\n[[table]]\nmatch = "public.%s"\nmode = "async"\n' "$t"; done
} >"$TMP/policy.toml"
for site in east west; do
    peer="${PEER[$site]}"
    cat >"$TMP/$site.toml" <<CONF
site = "$site"
listen = "127.0.0.1:${CG[$site]}"
admin = "127.0.0.1:${AD[$site]}"
policy = "policy.toml"
max_connections = 500

[primary]
url = "postgres://postgres@127.0.0.1:${PG[$site]}/postgres?sslmode=disable"

[[replicas]]
name = "$peer"
url = "postgres://postgres@127.0.0.1:${PG[$peer]}/postgres?sslmode=disable"
takes_writes = true
CONF
    pin_shell "$site"
    start_capgate_config "$TMP/$site.toml" "${CG[$site]}" "$TMP/capgate-$site.log"
    CG_PID[$site]=$CAPGATE_PID
done
[[ "$PIN" != 1 ]] || taskset -cp "0-$(($(nproc) - 1))" $$ >/dev/null

# /status of each site's only replica: halted tables, sampling, waiting for an empty queue.
cat >"$TMP/status.py" <<'PY'
import json, signal, sys, time, urllib.request

def replica(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=2) as r:
        return json.load(r)["replicas"][0]

mode, admins = sys.argv[1], sys.argv[2].split(",")
if mode == "entered":  # once no table is still entering: the halted ones, or "-"
    tables = replica(admins[0])["shipper"].get("tables") or []
    if len(tables) < int(sys.argv[3]) or any(t["state"] not in ("copied", "halted") for t in tables):
        sys.exit(1)
    print(" ".join(t["table"] for t in tables if t["state"] == "halted") or "-")
elif mode == "sample":  # until SIGTERM: one line per sample and site: site lag pending
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    names, interval, out = sys.argv[3].split(","), float(sys.argv[4]), open(sys.argv[5], "w", buffering=1)
    nxt = time.monotonic()
    while not stop:
        for name, admin in zip(names, admins):
            try:
                r = replica(admin)
                out.write(f"{name} {r['lag_seconds']} {r['pending_rows']}\n")
            except Exception as e:  # noqa: BLE001 - a failed sample is recorded, not fatal
                out.write(f"{name} error {e}\n")
        nxt += interval
        time.sleep(max(0.0, nxt - time.monotonic()))
elif mode == "idle":  # wait until every site's queue is empty; print the seconds it took
    t0 = time.monotonic()
    while time.monotonic() - t0 < float(sys.argv[3]):
        try:
            if all(replica(a)["pending_rows"] == 0 for a in admins):
                print(round(time.monotonic() - t0, 2)); sys.exit(0)
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.1)
    sys.exit(f"queues not empty after {sys.argv[3]} s: " + json.dumps([replica(a) for a in admins])[:2000])
PY
ADMINS="${AD[east]},${AD[west]}"

# Both sites hold the same rows, so each site's shipper takes the tables in as they are
# (decision 0028); a table that differs is halted and would have to be adopted by hand.
for site in east west; do
    halted=""
    for _ in $(seq 600); do
        halted="$(python3 "$TMP/status.py" entered "${AD[$site]}" "${#TABLES[@]}" 2>/dev/null)" && break
        sleep 0.2
    done
    [[ "$halted" == "-" ]] || die "$site's shipper did not take every table in (halted: ${halted:-not yet decided})"
done
python3 "$TMP/status.py" idle "$ADMINS" 60 >/dev/null || die "the shippers did not start"

# TPC-B on the site's own branches (pgbench's tpcb-like script with bid, tid and aid drawn
# from branches :lo..:hi).
cat >"$TMP/tpcb-site.sql" <<'SQL'
\set bid random(:lo, :hi)
\set aid (:bid - 1) * 100000 + random(1, 100000)
\set tid (:bid - 1) * 10 + random(1, 10)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
SQL
declare -A LO=([east]=1 [west]=$((SCALE / 2 + 1))) HI=([east]=$((SCALE / 2)) [west]=$SCALE)

TICK_US=$((1000000 / $(getconf CLK_TCK)))

# pgbench at site $1 for run $2; its CPU (user + system, seconds) goes to pgbench-$2-$1.cpu.
start_pgbench() { # site label
    on_site "$1" pgbench -n -f "$TMP/tpcb-site.sql" -D lo="${LO[$1]}" -D hi="${HI[$1]}" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
        -h 127.0.0.1 -p "${CG[$1]}" -U postgres postgres >"$TMP/pgbench-$2-$1.log" 2>&1 || return
    times | awk 'NR == 2 { gsub(/[ms]/, " "); print $1 * 60 + $2 + $3 * 60 + $4 }' >"$TMP/pgbench-$2-$1.cpu"
}
# CPU ticks of a site's server: the postmaster, every backend that has exited (its children's
# times) and every process it runs now (shipper, lag and apply backends, walwriter, ...).
server_ticks() {
    local pm c sum
    pm="$(head -1 "$TMP/$1/postmaster.pid")"
    sum=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pm/stat")
    for c in $(cat /proc/"$pm"/task/*/children); do
        sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}
tps_of() { sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$1" | head -1; }
txs_of() { sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$1"; }

# The backend at site $1 that applies the other site's changes (its shipper's session).
apply_pid() { q "${PG[$1]}" "select pid from pg_stat_activity where application_name = 'capgate shipper ${PEER[$1]}' limit 1"; }
pid_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# lines: target site tps capgate_cpu_us_per_tx txs site_cpu_us apply_cpu_us peer_txs
RESULTS="$TMP/results.txt"
: >"$RESULTS"
run() { # target (east | west | both) round
    local target=$1 round=$2 sites pid s t0 label sampler
    if [[ "$target" == both ]]; then sites=(east west); else sites=("$target"); fi
    label="$target-$round"
    declare -A before=() pids=()
    declare -A server_before=() applier=() apply_before=()
    for s in east west; do
        before[$s]=$(cpu_ticks "${CG_PID[$s]}")
        server_before[$s]=$(server_ticks "$s")
        applier[$s]="$(apply_pid "$s")"
        apply_before[$s]=$(pid_ticks "${applier[$s]:-0}")
    done
    python3 "$TMP/status.py" sample "$ADMINS" east,west "$LAG_INTERVAL" "$TMP/lag-$label.txt" &
    sampler=$!
    SAMPLERS+=("$sampler")
    for s in "${sites[@]}"; do start_pgbench "$s" "$label" & pids[$s]=$!; done
    for s in "${sites[@]}"; do wait "${pids[$s]}" || { cat "$TMP/pgbench-$label-$s.log" >&2; die "pgbench $label at $s failed"; }; done
    kill -TERM "$sampler"; wait "$sampler" 2>/dev/null || true
    for s in "${sites[@]}"; do
        local txs cpu
        txs="$(txs_of "$TMP/pgbench-$label-$s.log")"
        cpu=$(( ( $(cpu_ticks "${CG_PID[$s]}") - before[$s] ) * TICK_US / (txs > 0 ? txs : 1) ))
        # The whole site's CPU (its server with every backend, its capgate, its pgbench) and,
        # of it, the backend applying the other site's changes: see the summary.
        local site_cpu apply_cpu peer_txs=0
        site_cpu=$(( ( $(server_ticks "$s") - server_before[$s] + $(cpu_ticks "${CG_PID[$s]}") - before[$s] ) * TICK_US ))
        site_cpu=$(( site_cpu + $(awk '{ printf "%d", $1 * 1000000 }' "$TMP/pgbench-$label-$s.cpu") ))
        apply_cpu=$(( ( $(pid_ticks "${applier[$s]:-0}") - apply_before[$s] ) * TICK_US ))
        [[ "$target" != both ]] || peer_txs="$(txs_of "$TMP/pgbench-$label-${PEER[$s]}.log")"
        echo "$target $s $(tps_of "$TMP/pgbench-$label-$s.log") $cpu $txs $site_cpu $apply_cpu $peer_txs" >>"$RESULTS"
        log "$label: $s $(tps_of "$TMP/pgbench-$label-$s.log") TPS, capgate $cpu µs CPU/tx"
    done
    local idle
    idle="$(python3 "$TMP/status.py" idle "$ADMINS" 300)" || die "queues did not empty after $label"
    log "$label: queues empty $idle s after the run"
}

TARGETS=(east west both)
for round in $(seq "$ROUNDS"); do
    for i in 0 1 2; do run "${TARGETS[$(( (i + round - 1) % 3 ))]}" "$round"; done
done

# The sites must be equal, with no conflict (the branches are disjoint).
digest() {
    q "$1" "select (select md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts)
        || ' ' || (select md5(string_agg(tid || ':' || tbalance, ',' order by tid)) from pgbench_tellers)
        || ' ' || (select md5(string_agg(bid || ':' || bbalance, ',' order by bid)) from pgbench_branches)
        || ' history=' || (select count(*) || '/' || coalesce(sum(delta), 0) from pgbench_history)"
}
EQUAL=no
[[ "$(digest "${PG[east]}")" == "$(digest "${PG[west]}")" ]] && EQUAL=yes
CONFLICTS="$(q "${PG[east]}" "select count(*) from capgate.conflicts")/$(q "${PG[west]}" "select count(*) from capgate.conflicts")"

python3 - "$RESULTS" "$TMP" "$EQUAL" "$CONFLICTS" "$PIN" <<'PY'
import glob, statistics, sys
results, tmp, equal, conflicts, pin = sys.argv[1:6]
pin = "yes" if pin == "1" else "no"
rows = [l.split() for l in open(results)]
def med(target, site, col):
    v = [float(r[col]) for r in rows if r[0] == target and r[1] == site]
    return statistics.median(v) if v else float("nan")
print(f"{'site':6} {'alone TPS':>10} {'both TPS':>10} {'both/alone':>10} {'CPU/tx alone':>13} {'CPU/tx both':>12}")
for s in ("east", "west"):
    a, b = med(s, s, 2), med("both", s, 2)
    print(f"{s:6} {a:10.1f} {b:10.1f} {b / a:10.3f} {med(s, s, 3):11.0f}µs {med('both', s, 3):10.0f}µs")
# The same ratio from CPU time, which other work on a shared machine does not skew (a site
# alone leaves the other CPU to it, `both` does not): on a CPU of its own a site runs
# 1 / (CPU per transaction) transactions a second. Alone that is its own transactions' cost;
# in `both`, its own transactions' cost plus applying one of the other site's (at equal rates).
def per(rows, col, by):
    return statistics.median([float(r[col]) / max(float(r[by]), 1) for r in rows])
for s in ("east", "west"):
    alone_rows = [r for r in rows if r[0] == s and r[1] == s]
    both_rows = [r for r in rows if r[0] == "both" and r[1] == s]
    if not alone_rows or not both_rows:
        continue
    alone_cost = per(alone_rows, 5, 4)
    own = statistics.median([(float(r[5]) - float(r[6])) / max(float(r[4]), 1) for r in both_rows])
    apply = per(both_rows, 6, 7)
    if apply <= 0:  # the applying backend reconnected during a run: no figure
        continue
    print(f"{s}: CPU per transaction alone {alone_cost:.0f} µs; in `both` {own:.0f} µs of its own + {apply:.0f} µs "
          f"applying one of the other site's: both ÷ alone by CPU {alone_cost / (own + apply):.3f}")
alone = med("east", "east", 2) + med("west", "west", 2)
both = med("both", "east", 2) + med("both", "west", 2)
print(f"both sites together: {both:.1f} TPS = {both / (alone / 2):.3f} × one site alone")
for s in ("east", "west"):
    lags = []
    for f in glob.glob(f"{tmp}/lag-both-*.txt"):
        for l in open(f):
            p = l.split()
            if p[0] == s and p[1] not in ("error", "None"):
                lags.append(float(p[1]))
    lags.sort()
    if lags:
        q = lambda x: lags[min(len(lags) - 1, int(x * len(lags)))]
        print(f"lag of {s}'s changes at the other site during `both` ({len(lags)} samples): "
              f"p50 {q(0.5):.2f} s, p99 {q(0.99):.2f} s, max {lags[-1]:.2f} s")
print(f"sites equal after the run: {equal}; conflicts logged east/west: {conflicts}; each site on a CPU of its own: {pin}")
PY
[[ "$EQUAL" == yes ]] || { log "the sites differ"; exit 1; }

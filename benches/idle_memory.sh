#!/usr/bin/env bash
# benches/idle_memory.sh — capgate's resident memory per idle client session.
#
# What it does
#   * starts a throwaway PostgreSQL 15 (own temp dir, free loopback port,
#     max_connections=max(1100, N+100), trust auth on 127.0.0.1);
#   * starts capgate (`capgate run --config FILE`, max_connections = 2000)
#     in front of it and waits until `psql -c 'select 1'` works through it;
#   * reads capgate's VmRSS from /proc/PID/status ("before"), then opens N
#     client connections THROUGH capgate with psycopg 3 (asyncio, BATCH
#     connections in flight at a time). Every connection completes startup and
#     authentication (ReadyForQuery received) and then sits idle;
#   * waits SETTLE seconds, reads VmRSS again ("after"), prints
#       N idle sessions: RSS before X KiB, after Y KiB, per session Z KiB
#     then checks that every session still answers `select 1`, closes
#     everything and writes the figures as JSON to $OUT.
#
# How to read it
#   per session = (after - before) / N: the proxy's own cost of one idle
#   client session, including whatever it keeps for the matching server
#   connection (buffers, task stacks, TLS state, ...). It does not include
#   PostgreSQL's own per-backend memory. RSS counts pages actually touched, so
#   allocator caching makes small N noisy; use N >= 500 for a usable figure.
#   The "server backends" line shows how many PostgreSQL client backends
#   were open while the N sessions were idle (N = one backend per session).
#
# Usage
#   benches/idle_memory.sh [--quick]      (--quick: N=200)
#   Environment (defaults in brackets):
#     N=1000            idle client sessions to open
#     BATCH=100         connections opened concurrently per batch
#     SETTLE=2          seconds to wait before the "after" reading
#     CAPGATE_BIN=target/release/capgate (relative to the repo root; built
#                       with `cargo build --release` if missing)
#     OUT=target/bench/idle_memory.json
#     PGBIN=/usr/lib/postgresql/15/bin
#     KEEP_TMP=1        keep the temp dir (logs) after exit
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "--quick" ]]; then
    N=200
    shift
fi
if [[ $# -gt 0 ]]; then
    echo "usage: $0 [--quick]   (options are environment variables, see header)" >&2
    exit 2
fi

N="${N:-1000}"
BATCH="${BATCH:-100}"
SETTLE="${SETTLE:-2}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
OUT="${OUT:-$REPO_ROOT/target/bench/idle_memory.json}"
KEEP_TMP="${KEEP_TMP:-0}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"
PG_MAX_CONN=$(( N + 100 > 1100 ? N + 100 : 1100 ))
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGSERVICE PGOPTIONS PGAPPNAME PGSSLMODE PGGSSENCMODE || true
export PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10

log() { printf '[idle_memory.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }

for tool in "$PGBIN/initdb" "$PGBIN/pg_ctl" psql python3 runuser; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
id postgres >/dev/null 2>&1 || die "needs the 'postgres' OS user"
python3 -c 'import psycopg' 2>/dev/null || die "python3 cannot import psycopg (pip install 'psycopg[binary]')"

# ---------------------------------------------------------------- cleanup --
TMP=""
CAPGATE_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_capgate_and_postgres
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_capgate_bin

# N client sockets in this shell's children, N more in capgate: lift the
# soft fd limit to the hard limit (inherited by capgate and python).
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
if [[ "$(ulimit -Sn)" != unlimited && "$(ulimit -Sn)" -lt $(( 2 * N + 100 )) ]]; then
    log "warning: fd limit $(ulimit -Sn) may be too low for N=$N"
fi

# ------------------------------------------------------------ temp + ports --
TMP="$(mktemp -d /tmp/capgate-idlemem.XXXXXX)"
chmod 755 "$TMP"
chown postgres: "$TMP"
read -r PGPORT CGPORT < <(free_ports 2)

# -------------------------------------------------------------- postgres --
log "initdb in $TMP/pgdata (port $PGPORT, max_connections $PG_MAX_CONN)"
start_postgres "$PGPORT" "max_connections = $PG_MAX_CONN" "shared_buffers = 128MB"

# --------------------------------------------------------------- capgate --
start_capgate "$CGPORT" 127.0.0.1 "$PGPORT"

# ----------------------------------------------------------- measurement --
mkdir -p "$(dirname "$OUT")"
log "opening $N idle sessions through capgate (batches of $BATCH)"
python3 - "$CAPGATE_PID" "$N" "$BATCH" "$SETTLE" "$OUT" \
    "host=127.0.0.1 port=$CGPORT user=postgres dbname=postgres sslmode=disable connect_timeout=30" \
    "host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres sslmode=disable" <<'PY'
import asyncio, json, resource, sys, time

import psycopg

pid, n, batch, settle, out_path, proxy_dsn, direct_dsn = sys.argv[1:]
n, batch, settle = int(n), int(batch), float(settle)


def status_kib(field: str) -> int:
    """The number on a '<field>: <n> [kB]' line of /proc/<capgate>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def server_backends() -> int:
    with psycopg.connect(direct_dsn, autocommit=True) as c:
        row = c.execute("select count(*) from pg_stat_activity where backend_type = 'client backend' "
                        "and pid <> pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


async def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    time.sleep(settle)
    before = status_kib("VmRSS")
    conns: list[psycopg.AsyncConnection] = []
    t0 = time.monotonic()
    try:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            conns += await asyncio.gather(
                *(psycopg.AsyncConnection.connect(proxy_dsn, autocommit=True) for _ in range(k)))
        opened = time.monotonic() - t0
        await asyncio.sleep(settle)
        after = status_kib("VmRSS")
        hwm = status_kib("VmHWM")
        threads = status_kib("Threads")  # no unit, same "Name: value" layout
        backends = server_backends()
        per = (after - before) / n
        print(f"{n} idle sessions: RSS before {before} KiB, after {after} KiB, per session {per:.1f} KiB")
        print(f"  (opened in {opened:.1f} s; capgate VmHWM {hwm} KiB, {threads} threads; "
              f"server backends while idle: {backends})")

        # Every session must still be usable.
        for start in range(0, n, batch):
            rows = await asyncio.gather(*(c.execute("select 1") for c in conns[start:start + batch]))
            for cur in rows:
                assert await cur.fetchone() == (1,)
        with open(out_path, "w") as f:
            json.dump({"benchmark": "idle_memory", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "sessions": n, "rss_before_kib": before, "rss_after_kib": after,
                       "per_session_kib": round(per, 1), "vmhwm_kib": hwm, "threads": threads,
                       "server_backends": backends, "open_seconds": round(opened, 2)}, f, indent=2)
            f.write("\n")
        return 0
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


sys.exit(asyncio.run(main()))
PY
log "JSON: $OUT"

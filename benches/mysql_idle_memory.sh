#!/usr/bin/env bash
# benches/mysql_idle_memory.sh — capgate's resident memory per idle MySQL client session.
#
# What it does
#   * starts a throwaway MariaDB (max_connections = N + 100) and capgate in front of it;
#   * reads capgate's VmRSS from /proc/PID/status ("before"), opens N client connections
#     through capgate with PyMySQL (each one logged in, then idle), waits SETTLE seconds,
#     reads VmRSS again ("after") and prints
#       N idle sessions: RSS before X KiB, after Y KiB, per session Z KiB
#   * checks that every session still answers `SELECT 1`, closes them, writes JSON to $OUT.
#
# per session = (after - before) / N: capgate's own cost of an idle client session with its
# primary connection (buffers, task, socket state); MariaDB's own memory is not included.
# Target: at most 64 KiB.
#
# Usage: benches/mysql_idle_memory.sh [--quick]     (--quick: N=200)
#   Environment: N=1000 SETTLE=2 CAPGATE_BIN=target/release/capgate OUT=target/bench/mysql_idle_memory.json KEEP_TMP=1
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "--quick" ]]; then
    N=200
    shift
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--quick]   (options are environment variables, see header)" >&2; exit 2; }
N="${N:-1000}"
SETTLE="${SETTLE:-2}"
OUT="${OUT:-$REPO_ROOT/target/bench/mysql_idle_memory.json}"
KEEP_TMP="${KEEP_TMP:-0}"
# shellcheck source=benches/lib.sh
. "$REPO_ROOT/benches/lib.sh"

log() { printf '[mysql_idle_memory.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
# shellcheck source=benches/mylib.sh
. "$REPO_ROOT/benches/mylib.sh"
python3 -c 'import pymysql' 2>/dev/null || die "PyMySQL is missing (pip install PyMySQL)"

TMP=""
CAPGATE_PID=""
MARIADB_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_capgate_and_mariadb
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM
TMP="$(mktemp -d /tmp/capgate-myidle.XXXXXX)"
ulimit -n 8192

ensure_capgate_bin
read -r MYPORT CGPORT <<<"$(free_ports 2)"
start_mariadb "$MYPORT" --max-connections=$((N + 100))
start_capgate_mysql "$CGPORT" "$MYPORT"

python3 - "$CAPGATE_PID" "$CGPORT" "$N" "$SETTLE" "$OUT" <<'PY'
import json, os, sys, time
import pymysql

pid, port, n, settle, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

before = rss_kib()
conns = [pymysql.connect(host="127.0.0.1", port=port, user="capgate", password="") for _ in range(n)]
time.sleep(settle)
after = rss_kib()
per = (after - before) / n
print(f"{n} idle sessions: RSS before {before} KiB, after {after} KiB, per session {per:.1f} KiB")
for c in conns:
    with c.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    c.close()
print(f"all {n} sessions answered SELECT 1")
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump({"sessions": n, "rss_before_kib": before, "rss_after_kib": after, "per_session_kib": per}, open(out, "w"))
PY

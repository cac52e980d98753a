#!/usr/bin/env bash
# fuzz/seed.sh — (re)captures the fuzz targets' seed corpora from real traffic.
#
# Starts a throwaway PostgreSQL (benches/lib.sh, a temp dir and free loopback ports), puts
# fuzz/capture.py in front of it, and runs real clients through it: psql with
# tests/sql/compat.sql, pgbench -i and -S / TPC-B in the simple, extended and prepared
# protocols, and psycopg 3's compatibility scenario (tests/python/compat.py: binary types,
# pipelines, COPY, cancel). capture.py then writes fuzz/corpus/{startup,frame,messages,
# classify,session}; the policy and config seeds are the example file and the files written here.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
OUT="$REPO_ROOT/fuzz/corpus"
log() { printf '[seed.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }
. "$REPO_ROOT/benches/lib.sh"
unset PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS || true
export PGSSLMODE=disable PGGSSENCMODE=disable

TMP="$(mktemp -d /tmp/capgate-seed.XXXXXX)"
CAPTURE_PID=""
cleanup() {
    set +e
    [[ -n "$CAPTURE_PID" ]] && kill "$CAPTURE_PID" 2>/dev/null
    stop_capgate_and_postgres
    rm -rf "$TMP"
}
trap cleanup EXIT
chmod 755 "$TMP"; chown postgres: "$TMP"
read -r PGPORT CAPPORT < <(free_ports 2)
start_postgres "$PGPORT"
rm -rf "$OUT/startup" "$OUT/frame" "$OUT/messages" "$OUT/classify" "$OUT/session" "$OUT/mysql"
python3 "$REPO_ROOT/fuzz/capture.py" "$CAPPORT" 127.0.0.1 "$PGPORT" "$OUT" &
CAPTURE_PID=$!
wait_accepting capture "$CAPPORT" "$CAPTURE_PID" || die "capture.py does not relay"

via=(-h 127.0.0.1 -p "$CAPPORT" -U postgres)
log "psql: tests/sql/compat.sql"
(cd "$REPO_ROOT/tests/sql" && psql -X "${via[@]}" -d postgres -f compat.sql >/dev/null 2>&1) || true
log "pgbench"
pgbench -i -q -s 1 "${via[@]}" postgres >/dev/null 2>&1
for mode in simple extended prepared; do
    pgbench -n -S -M "$mode" -c 2 -t 20 "${via[@]}" postgres >/dev/null 2>&1
    pgbench -n -M "$mode" -c 2 -t 20 "${via[@]}" postgres >/dev/null 2>&1
done
if python3 -c 'import psycopg' 2>/dev/null; then
    log "psycopg: tests/python/compat.py"
    python3 "$REPO_ROOT/tests/python/compat.py" --proxy "postgresql://postgres@127.0.0.1:$CAPPORT/postgres" \
        --direct "postgresql://postgres@127.0.0.1:$PGPORT/postgres" >/dev/null 2>&1 || true
fi
kill -TERM "$CAPTURE_PID"
wait "$CAPTURE_PID" || true
CAPTURE_PID=""

log "policy, config and MySQL seeds"
mkdir -p "$OUT/policy" "$OUT/config"
cp "$REPO_ROOT/examples/capgate.toml" "$OUT/config/example.toml"
python3 - "$OUT" <<'PY'
import os, sys
out = sys.argv[1]
policy = {
    "full.toml": 'default = "local"\nunknown = "refuse"\n[[table]]\nmatch = "public.orders"\nmode = "sync"\n'
                 'on_partition = "block"\npartition_timeout = "2s"\nnondeterministic = "refuse"\n'
                 '[[table]]\nmatch = "public.cart*"\nmode = "async"\non_conflict = "overwrite"\n'
                 '[[table]]\nmatch = "app.*"\nmode = "bounded"\nmax_lag = "5s"\non_partition = "fail"\n'
                 '[[function]]\nname = "public.audit"\nwrites = ["public.log"]\n',
    "default.toml": 'default = "async"\n',
    "bad.toml": 'default = "sometimes"\n[[table]]\nmode = "sync"\n',
}
config = {
    "full.toml": 'site = "a"\nlisten = "127.0.0.1:6432"\nadmin = "127.0.0.1:9930"\npolicy = "policy.toml"\n'
                 'max_connections = 100\nshutdown_timeout = "5s"\nauthentication_timeout = "10s"\n'
                 '[primary]\nurl = "postgres://app:pw@%2Fvar%2Frun%2Fpostgresql/app?connect_timeout=3"\n'
                 '[[replicas]]\nname = "b"\nurl = "postgres://r:pw@10.0.0.2:5432/app?sslmode=verify-full&sslrootcert=ca.pem"\n'
                 'partition_latency = "500ms"\nheartbeat_interval = "100ms"\npartition_after = 3\nheal_after = 4\n'
                 '[tls]\ncert = "server.crt"\nkey = "server.key"\nmode = "require"\n'
                 '[[users]]\nname = "u"\nscram_verifier = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"\n',
    "bad.toml": 'site = ""\nlisten = "nowhere"\n[primary]\nurl = "mysql://x"\n',
}
# MySQL packets as a MariaDB server and client exchange them (built here: the seed script
# starts no MariaDB): greeting, handshake response, COM_QUERY, a result set, OK, ERR.
def pkt(seq, payload):
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload
def lenenc(b):
    return bytes([len(b)]) + b
greeting = (b"\x0a" + b"11.8.3-MariaDB\0" + (42).to_bytes(4, "little") + b"abcdefgh\0" + (0xf7fe).to_bytes(2, "little")
            + b"\x2d" + (0x0002).to_bytes(2, "little") + (0x81ff).to_bytes(2, "little") + b"\x15" + b"\0" * 6
            + (0x1d).to_bytes(4, "little") + b"ijklmnopqrst\0" + b"mysql_native_password\0")
response = ((0x000aa28f).to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d" + b"\0" * 23 + b"app\0"
            + lenenc(bytes(range(20))) + b"app\0" + b"mysql_native_password\0")
column = lenenc(b"def") + lenenc(b"") + lenenc(b"") + lenenc(b"") + lenenc(b"1") + lenenc(b"") + b"\x0c" + (63).to_bytes(2, "little") + (1).to_bytes(4, "little") + b"\x08\x81\x00\x00\x00\x00"
eof = b"\xfe\x00\x00\x02\x00"
ok = b"\x00\x01\x00\x02\x00\x00\x00"
err = b"\xff" + (1146).to_bytes(2, "little") + b"#42S02Table 'app.nope' doesn't exist"
mysql = {
    "handshake": b"\x10" + pkt(0, greeting) + pkt(1, response) + pkt(2, ok),
    "select": b"\x04" + pkt(0, b"\x03SELECT 1") + pkt(1, b"\x01") + pkt(2, column) + pkt(3, eof) + pkt(4, lenenc(b"1")) + pkt(5, eof),
    "select_deprecate_eof": b"\x14" + pkt(1, b"\x01") + pkt(2, column) + pkt(3, lenenc(b"1")) + pkt(4, b"\xfe\x00\x00\x02\x00\x00\x00"),
    "error": b"\x01" + pkt(0, b"\x03SELECT * FROM nope") + pkt(1, err),
    "kill": b"\x01" + pkt(0, b"\x03KILL QUERY 42") + pkt(0, b"\x0e") + pkt(1, ok),
    "split": b"\x00" + (0xffffff).to_bytes(3, "little") + b"\x00" + b"\x03" + b"x" * 100,
}
os.makedirs(os.path.join(out, "mysql"), exist_ok=True)
for name, data in mysql.items():
    open(os.path.join(out, "mysql", name), "wb").write(data)
for kind, files in (("policy", policy), ("config", config)):
    for name, text in files.items():
        open(os.path.join(out, kind, name), "w").write(text)
PY
for d in "$OUT"/*; do log "$(basename "$d"): $(ls "$d" | wc -l) seeds, $(du -sh "$d" | cut -f1)"; done

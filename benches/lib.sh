# benches/lib.sh — pieces shared by the benchmark scripts (sourced, not run).
# Expects: PGBIN, TMP (set before start_postgres), CAPGATE_BIN, CAPGATE_DEFAULT_BIN, REPO_ROOT,
# and log/die defined by the caller.

# Build the release binary when the default one is missing.
ensure_capgate_bin() {
    [[ -x "$CAPGATE_BIN" ]] && return 0
    [[ "$CAPGATE_DEFAULT_BIN" == 1 ]] || die "CAPGATE_BIN=$CAPGATE_BIN is not an executable"
    log "building capgate (cargo build --release)"
    (cd "$REPO_ROOT" && cargo build --release) >&2 || die "cargo build failed"
    [[ -x "$CAPGATE_BIN" ]] || die "cargo build did not produce $CAPGATE_BIN"
}

# N distinct free loopback ports on one line; all sockets are held open at once.
free_ports() {
    python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
for s in ss: s.close()' "$1"
}

# A throwaway PostgreSQL in $TMP/pgdata on port $1, trusting local connections; the remaining
# arguments are extra postgresql.conf lines.
start_postgres() {
    local port=$1; shift
    runuser -u postgres -- "$PGBIN/initdb" -D "$TMP/pgdata" -U postgres -A trust \
        --encoding UTF8 --locale C --no-sync >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$TMP'"
        echo "logging_collector = off"
        printf '%s\n' "$@"
    } >>"$TMP/pgdata/postgresql.conf"
    printf 'local all all trust\nhost  all all 127.0.0.1/32 trust\n' >"$TMP/pgdata/pg_hba.conf"
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pgdata" -l "$TMP/postgres.log" -w -t 60 start >/dev/null \
        || { tail -20 "$TMP/postgres.log" >&2; die "postgres did not start"; }
}

# Wait until something answers `select 1` on port $2 (name $1); give up early if pid $3 dies.
wait_accepting() {
    local name=$1 port=$2 pid=${3:-}
    for _ in $(seq 300); do
        if psql -XAtq -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'select 1' >/dev/null 2>&1; then
            return 0
        fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# capgate on port $1 in front of the primary URL host $2 and port $3; sets CAPGATE_PID.
start_capgate() {
    local port=$1 host=$2 pgport=$3
    cat >"$TMP/capgate.toml" <<CONF
site = "bench"
listen = "127.0.0.1:$port"
max_connections = 2000
[primary]
url = "postgres://postgres@$host:$pgport/postgres?sslmode=disable"
CONF
    log "capgate on port $port ($CAPGATE_BIN)"
    "$CAPGATE_BIN" run --config "$TMP/capgate.toml" >"$TMP/capgate.log" 2>&1 &
    CAPGATE_PID=$!
    wait_accepting capgate "$port" "$CAPGATE_PID" || { tail -30 "$TMP/capgate.log" >&2; die "capgate does not accept connections"; }
}

# For cleanup traps: stop capgate (TERM, then KILL after 5 s) and the throwaway PostgreSQL.
stop_capgate_and_postgres() {
    if [[ -n "${CAPGATE_PID:-}" ]] && kill -0 "$CAPGATE_PID" 2>/dev/null; then
        kill -TERM "$CAPGATE_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$CAPGATE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CAPGATE_PID" 2>/dev/null
        wait "$CAPGATE_PID" 2>/dev/null
    fi
    if [[ -n "${TMP:-}" && -f "$TMP/pgdata/postmaster.pid" ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pgdata" -m immediate -w stop >/dev/null 2>&1
    fi
}

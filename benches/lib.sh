# benches/lib.sh — pieces shared by the benchmark scripts (sourced, not run).
# Expects: REPO_ROOT when sourced; PGBIN, TMP (set before start_postgres) and log/die defined by
# the caller before calling its functions.

# The binary to measure: CAPGATE_BIN, or the release build (CAPGATE_DEFAULT_BIN=1: built by
# build_capgate_release / ensure_capgate_bin).
if [[ -z "${CAPGATE_BIN:-}" ]]; then
    CAPGATE_BIN="$REPO_ROOT/target/release/capgate"
    CAPGATE_DEFAULT_BIN=1
else
    CAPGATE_DEFAULT_BIN=0
fi

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
${CAPGATE_WORKERS:+workers = $CAPGATE_WORKERS}
[primary]
url = "postgres://postgres@$host:$pgport/postgres?sslmode=disable"
CONF
    log "capgate on port $port ($CAPGATE_BIN)"
    # In a session of its own: see start_capgate_config.
    setsid "$CAPGATE_BIN" run --config "$TMP/capgate.toml" >"$TMP/capgate.log" 2>&1 &
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

# ----------------------------------------------------------------------------------------------
# Multi-server pieces (benches/replication.sh). Additions only: the functions above are
# unchanged.

# Always runs `cargo build --release` (a no-op when up to date) when the default binary is in
# use, so a benchmark never measures a stale build; with CAPGATE_BIN set, only checks it.
build_capgate_release() {
    if [[ "$CAPGATE_DEFAULT_BIN" == 1 ]]; then
        log "building capgate (cargo build --release)"
        (cd "$REPO_ROOT" && cargo build --release) >&2 || die "cargo build failed"
    fi
    [[ -x "$CAPGATE_BIN" ]] || die "$CAPGATE_BIN is not an executable"
}

# A throwaway PostgreSQL in $TMP/$1 (log $TMP/$1.log) on port $2, trusting local connections;
# the remaining arguments are extra postgresql.conf lines. Several can run side by side.
start_postgres_named() {
    local name=$1 port=$2; shift 2
    runuser -u postgres -- "$PGBIN/initdb" -D "$TMP/$name" -U postgres -A trust \
        --encoding UTF8 --locale C --no-sync >"$TMP/$name-initdb.log" 2>&1 \
        || { cat "$TMP/$name-initdb.log" >&2; die "initdb for $name failed"; }
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$TMP'"
        echo "logging_collector = off"
        printf '%s\n' "$@"
    } >>"$TMP/$name/postgresql.conf"
    printf 'local all all trust\nhost  all all 127.0.0.1/32 trust\n' >"$TMP/$name/pg_hba.conf"
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/$name" -l "$TMP/$name.log" -w -t 60 start >/dev/null \
        || { tail -20 "$TMP/$name.log" >&2; die "postgres $name did not start"; }
}

# For cleanup traps: stop the server started by start_postgres_named $1, if it runs.
stop_postgres_named() {
    if [[ -n "${TMP:-}" && -f "$TMP/$1/postmaster.pid" ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/$1" -m immediate -w stop >/dev/null 2>&1
    fi
}

# capgate with the config file $1, listening on port $2 (as the config says), output appended
# to $3; sets CAPGATE_PID. Dies if it does not accept connections.
#
# capgate runs in a session of its own (setsid), as a service manager starts a daemon and as
# pg_ctl starts PostgreSQL and `pgbouncer -d` PgBouncer: the kernel's autogroup scheduler
# shares a busy CPU between sessions first, so a capgate left in this script's session, with
# pgbench and the other site's capgate, starved the PostgreSQL backends of its own site's
# shipper and walwriter (100–400 ms in the run queue per wake-up, measured from
# /proc/PID/schedstat) and replication waited until the load stopped (decision 0037).
start_capgate_config() {
    local config=$1 port=$2 logf=$3
    setsid "$CAPGATE_BIN" run --config "$config" >>"$logf" 2>&1 &
    CAPGATE_PID=$!
    wait_accepting capgate "$port" "$CAPGATE_PID" || { tail -30 "$logf" >&2; die "capgate does not accept connections"; }
}

# Stop the capgate started last (TERM, then KILL after 10 s); clears CAPGATE_PID. Safe under
# `set -e` (capgate's exit status is not checked here).
stop_capgate() {
    if [[ -n "${CAPGATE_PID:-}" ]] && kill -0 "$CAPGATE_PID" 2>/dev/null; then
        kill -TERM "$CAPGATE_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$CAPGATE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CAPGATE_PID" 2>/dev/null || true
    fi
    if [[ -n "${CAPGATE_PID:-}" ]]; then wait "$CAPGATE_PID" 2>/dev/null || true; fi
    CAPGATE_PID=""
}

# capgate-link ($LINK_BIN) relaying to 127.0.0.1:$1; output in $TMP/link.out. Sets LINK_PID,
# LINK_LISTEN (host:port clients use) and LINK_CONTROL (host:port of its control protocol).
start_link() {
    local target_port=$1
    "$LINK_BIN" --listen 127.0.0.1:0 --target "127.0.0.1:$target_port" --control 127.0.0.1:0 \
        >"$TMP/link.out" 2>&1 </dev/null &
    LINK_PID=$!
    for _ in $(seq 100); do grep -q '^control ' "$TMP/link.out" && break; sleep 0.05; done
    grep -q '^control ' "$TMP/link.out" || { cat "$TMP/link.out" >&2; die "capgate-link did not start"; }
    LINK_LISTEN="$(awk '/^listen /{print $2}' "$TMP/link.out")"
    LINK_CONTROL="$(awk '/^control /{print $2}' "$TMP/link.out")"
}

# Send one control command (e.g. `latency 25ms`, `refuse on`) to the link; dies on `error:`.
link_cmd() {
    local answer
    exec 7<>"/dev/tcp/${LINK_CONTROL%:*}/${LINK_CONTROL##*:}" || die "cannot reach the link's control port"
    echo "$*" >&7
    read -r answer <&7
    exec 7>&-
    [[ "$answer" != error:* ]] || die "link: $* -> $answer"
    echo "$answer"
}

# For cleanup traps: stop the link started by start_link.
stop_link() {
    if [[ -n "${LINK_PID:-}" ]] && kill -0 "$LINK_PID" 2>/dev/null; then
        kill -TERM "$LINK_PID" 2>/dev/null || true
        wait "$LINK_PID" 2>/dev/null || true
    fi
    LINK_PID=""
}

# CPU time (user + system) of process $1 in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# benches/mylib.sh — pieces shared by the MySQL benchmark scripts (sourced, not run).
# Expects: TMP, CAPGATE_BIN, log/die defined by the caller; benches/lib.sh sourced (free_ports).

# A throwaway MariaDB in $TMP/mariadb (or $MARIADB_DIR) on port $1; the remaining arguments
# are extra mariadbd options. Creates the `capgate` user (no password, every privilege). Sets
# MARIADB_PID.
#
# mariadbd, like capgate (start_capgate_mysql), runs in a session of its own (setsid), as a
# service manager starts either: the kernel's autogroup scheduler shares a busy CPU between
# sessions first, and left in this script's session the servers and capgate competed with
# sysbench's threads as one group (decision 0037, docs/performance.md "The lag, found").
# setsid does not fork here (a background job of a script is not a process-group leader),
# so $! is the server's own PID, which the cleanup trap signals; own_session checks it.
start_mariadb() {
    local port=$1; shift
    local dir="${MARIADB_DIR:-$TMP/mariadb}"
    mkdir -p "$dir" && chown mysql: "$dir" && chmod 755 "$TMP"
    mariadb-install-db --no-defaults --user=mysql --auth-root-authentication-method=normal --skip-test-db \
        --datadir="$dir/data" >"$TMP/install-db.log" 2>&1 || { cat "$TMP/install-db.log" >&2; die "mariadb-install-db failed"; }
    setsid mariadbd --no-defaults --user=mysql --bind-address=127.0.0.1 --skip-name-resolve --port="$port" \
        --datadir="$dir/data" --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir.log" \
        "$@" >>"$dir.log" 2>&1 &
    MARIADB_PID=$!
    own_session "$MARIADB_PID" mariadbd
    for _ in $(seq 600); do
        mariadb --no-defaults -uroot --socket="$dir/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && break
        kill -0 "$MARIADB_PID" 2>/dev/null || { tail -20 "$dir.log" >&2; die "mariadbd exited"; }
        sleep 0.1
    done
    mariadb --no-defaults -uroot --socket="$dir/mysqld.sock" \
        -e "CREATE USER 'capgate'@'%'; GRANT ALL PRIVILEGES ON *.* TO 'capgate'@'%'; CREATE DATABASE sbtest" \
        || die "cannot create the capgate user"
}

# Dies unless process $1 (named $2) leads a session of its own: started with setsid, it did
# not fork, so its PID is the one the cleanup trap stops. Waits briefly for setsid's exec.
own_session() {
    local pid=$1 what=$2 sid=""
    for _ in $(seq 50); do
        sid=$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')
        [[ "$sid" == "$pid" ]] && return 0
        sleep 0.02
    done
    die "$what (pid $pid) is not in a session of its own (session ${sid:-gone})"
}

# capgate on port $1 in front of the MariaDB on port $2; sets CAPGATE_PID.
start_capgate_mysql() {
    local port=$1 myport=$2
    cat >"$TMP/capgate.toml" <<CONF
site = "bench"
listen = "127.0.0.1:$port"
max_connections = 2000
[primary]
url = "mysql://capgate@127.0.0.1:$myport/?sslmode=disable"
CONF
    log "capgate on port $port ($CAPGATE_BIN)"
    setsid "$CAPGATE_BIN" run --config "$TMP/capgate.toml" >"$TMP/capgate.log" 2>&1 &
    CAPGATE_PID=$!
    own_session "$CAPGATE_PID" capgate
    for _ in $(seq 300); do
        mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$port" -ucapgate -e 'select 1' >/dev/null 2>&1 && return 0
        kill -0 "$CAPGATE_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -30 "$TMP/capgate.log" >&2
    die "capgate does not accept connections"
}

# For cleanup traps: stop capgate and the throwaway MariaDB (TERM, then KILL after 10 s).
stop_capgate_and_mariadb() {
    local pid
    for pid in "${CAPGATE_PID:-}" "${MARIADB_PID:-}"; do
        [[ -n "$pid" ]] || continue
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
}

# benches/instructions_mysql.sh — the DB=mysql mode of benches/instructions.sh (sourced by it,
# not run): capgate's MySQL front end and MariaDB itself under callgrind, one fixed sysbench
# run each (capgate's with MariaDB running natively, MariaDB's direct). Expects from instructions.sh: REPO_ROOT, CLIENTS, TX, WORKLOAD, KEEP_TMP,
# CAPGATE_BIN, CAPGATE_WORKERS, log, die, per_transaction; benches/lib.sh sourced.
#
# Why MariaDB under callgrind too: with no PgBouncer to compare against, the database's own
# instructions per transaction are the yardstick; a proxy costing a third of what the server
# spends on a point select is read differently from one costing a twentieth.

PS_MODE="${PS_MODE:-auto}"
for tool in sysbench mariadbd mariadb-install-db mariadb; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
case "$WORKLOAD" in
    oltp_point_select | oltp_read_only) ;;
    *) die "WORKLOAD is oltp_point_select or oltp_read_only, not $WORKLOAD" ;;
esac

TMP="$(mktemp -d /tmp/capgate-instr.XXXXXX)"
chmod 755 "$TMP"
# MariaDB runs as the mysql user (so that callgrind_control, run as that user too, reaches
# it); its data, log and callgrind dumps live in a directory it owns.
MY="$TMP/mariadb"
mkdir -p "$MY"
chown mysql: "$MY"
CAPGATE_PID=""
MY_PID=""
cleanup() {
    local pid
    for pid in "$CAPGATE_PID" "$MY_PID"; do
        [[ -n "$pid" ]] || continue
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [[ "$KEEP_TMP" == 1 ]] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT
read -r MYPORT CGPORT < <(free_ports 2)

mariadb-install-db --no-defaults --user=mysql --auth-root-authentication-method=normal --skip-test-db \
    --datadir="$MY/data" >"$TMP/install-db.log" 2>&1 || { cat "$TMP/install-db.log" >&2; die "mariadb-install-db failed"; }
# MariaDB as the mysql user on $MYPORT, the arguments before it (a valgrind command line, or
# none) in front of mariadbd; sets MY_PID to the server's own pid (valgrind's, under it).
# Options for valgrind, harmless without it: the buffer pool's reservation is capped (by
# default InnoDB reserves address space for 8 TB, which valgrind cannot map) and InnoDB uses
# plain I/O, not Linux native AIO.
start_mariadb_as_mysql() {
    runuser -u mysql -- "$@" mariadbd --no-defaults --bind-address=127.0.0.1 --skip-name-resolve --port="$MYPORT" \
        --datadir="$MY/data" --socket="$MY/mysqld.sock" --pid-file="$MY/mysqld.pid" --log-error="$MY/error.log" \
        --innodb-buffer-pool-size=256M --innodb-buffer-pool-size-max=256M --innodb-flush-log-at-trx-commit=2 \
        --innodb-use-native-aio=0 --max-connections=500 >>"$TMP/mariadb.out" 2>&1 &
    local runuser_pid=$!
    for _ in $(seq 1200); do
        mariadb --no-defaults -uroot --socket="$MY/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && break
        kill -0 "$runuser_pid" 2>/dev/null || { tail -20 "$MY/error.log" "$TMP/mariadb.out" >&2; die "mariadbd exited"; }
        sleep 0.1
    done
    MY_PID="$(pgrep -u mysql -n -f "mariadbd.*$MY/data" || true)"
    [[ -n "$MY_PID" ]] || die "mariadbd did not start"
}

stop_mariadb() {
    kill -TERM "$MY_PID" 2>/dev/null || return 0
    for _ in $(seq 600); do kill -0 "$MY_PID" 2>/dev/null || break; sleep 0.1; done
    MY_PID=""
}

# First MariaDB as it runs in production, for capgate's count (so capgate sees a server
# as fast as in benches/sysbench.sh); then, for its own count, under callgrind.
start_mariadb_as_mysql
mariadb --no-defaults -uroot --socket="$MY/mysqld.sock" \
    -e "CREATE USER 'capgate'@'%'; GRANT ALL PRIVILEGES ON *.* TO 'capgate'@'%'; CREATE DATABASE sbtest" \
    || die "cannot create the capgate user"

sb() {
    local port=$1; shift
    sysbench "$@" --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" --mysql-user=capgate \
        --mysql-db=sbtest --mysql-ssl=off --tables=4 --table-size=10000
}
log "MariaDB on port $MYPORT; sysbench prepare (4 tables x 10,000 rows)"
sb "$MYPORT" oltp_read_write prepare >"$TMP/prepare.log" 2>&1 || { tail "$TMP/prepare.log" >&2; die "sysbench prepare failed"; }

# Run the counted sysbench against port $2 with the callgrind process $3 (controlled by the
# command in CTL) and print its instructions per transaction as $1 (dumps named $4.*).
count_sysbench() {
    local name=$1 port=$2 pid=$3 out=$4 txs
    sb "$port" "$WORKLOAD" --threads="$CLIENTS" --events=$((CLIENTS * 200)) --time=0 --db-ps-mode="$PS_MODE" run >"$TMP/$name.warmup" 2>&1 \
        || { tail "$TMP/$name.warmup" >&2; die "warm-up through $name failed"; }
    "${CTL[@]}" -i on "$pid" >/dev/null 2>&1
    sb "$port" "$WORKLOAD" --threads="$CLIENTS" --events=$((CLIENTS * TX)) --time=0 --db-ps-mode="$PS_MODE" run >"$TMP/$name.sysbench" 2>&1 \
        || { tail "$TMP/$name.sysbench" >&2; die "sysbench through $name failed"; }
    "${CTL[@]}" -d "$pid" >/dev/null 2>&1
    "${CTL[@]}" -i off "$pid" >/dev/null 2>&1
    sleep 1
    txs="$(awk '/transactions:/ { print $2 }' "$TMP/$name.sysbench")"
    [[ -n "$txs" && "$txs" -gt 0 ]] || die "no transactions counted through $name"
    per_transaction "$out" "$txs" "$name"
}

cat >"$TMP/capgate.toml" <<CONF
site = "bench"
listen = "127.0.0.1:$CGPORT"
max_connections = 2000
${CAPGATE_WORKERS:+workers = $CAPGATE_WORKERS}
[primary]
url = "mysql://capgate@127.0.0.1:$MYPORT/?sslmode=disable"
CONF
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.capgate.%p" \
    "$CAPGATE_BIN" run --config "$TMP/capgate.toml" >"$TMP/capgate.log" 2>&1 &
CAPGATE_PID=$!
for _ in $(seq 600); do
    mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$CGPORT" -ucapgate -e 'select 1' >/dev/null 2>&1 && break
    kill -0 "$CAPGATE_PID" 2>/dev/null || { tail -30 "$TMP/capgate.log" >&2; die "capgate under valgrind exited"; }
    sleep 0.1
done
log "sysbench $WORKLOAD, $CLIENTS threads, $((CLIENTS * TX)) transactions, --db-ps-mode=$PS_MODE: through capgate, then direct"
CTL=(callgrind_control)
count_sysbench capgate "$CGPORT" "$CAPGATE_PID" "$TMP/cg.capgate.$CAPGATE_PID"
kill -TERM "$CAPGATE_PID" 2>/dev/null || true
wait "$CAPGATE_PID" 2>/dev/null || true
CAPGATE_PID=

stop_mariadb
start_mariadb_as_mysql valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$MY/cg.mariadb.%p"
CTL=(runuser -u mysql -- callgrind_control)
count_sysbench mariadb "$MYPORT" "$MY_PID" "$MY/cg.mariadb.$MY_PID"

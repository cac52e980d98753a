#!/bin/sh
# First start: a cluster trusting the compose network, the settings replication needs, and
# the SQL files of /docker-init run once. Then postgres in the foreground.
set -eu
BIN=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  "$BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
max_prepared_transactions = 100
wal_level = logical
CONF
  echo "host all all ${TRUST_NETWORK:-10.213.0.0/24} trust" >>"$PGDATA/pg_hba.conf"
  if [ -d /docker-init ]; then
    "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    for f in /docker-init/*.sql; do
      [ -e "$f" ] && "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres -f "$f"
    done
    "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
fi
exec "$BIN/postgres" -D "$PGDATA"

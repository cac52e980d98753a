#!/bin/sh
# First start: a data directory (Debian's package already made one), the database `shop`,
# and root allowed from the compose network. Then mariadbd in the foreground.
set -eu
if [ ! -e /var/lib/mysql/.capgate-initialized ]; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --auth-root-authentication-method=normal --skip-test-db >/dev/null
  mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
  pid=$!
  for _ in $(seq 1 100); do mariadb --socket=/run/mysqld/init.sock -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb --socket=/run/mysqld/init.sock <<SQL
CREATE DATABASE shop;
CREATE USER 'root'@'${TRUST_NETWORK_MASK:-10.213.0.%}';
GRANT ALL ON *.* TO 'root'@'${TRUST_NETWORK_MASK:-10.213.0.%}' WITH GRANT OPTION;
SQL
  kill "$pid"; wait "$pid" || true
  touch /var/lib/mysql/.capgate-initialized
fi
exec mariadbd --user=mysql --bind-address=0.0.0.0 --skip-name-resolve

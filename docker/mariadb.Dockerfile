# A MariaDB site for the compose environment's `mariadb` profile: Debian's mariadb-server,
# root without a password from the compose network only. For trying capgate, not for
# keeping data.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mariadb-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
COPY docker/mariadb-entrypoint.sh /usr/local/bin/mariadb-entrypoint.sh
EXPOSE 3306
ENTRYPOINT ["/usr/local/bin/mariadb-entrypoint.sh"]

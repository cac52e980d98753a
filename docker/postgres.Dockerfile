# A PostgreSQL site for the compose environment: Debian's postgresql-15, a cluster made at
# first start with the settings replication needs (max_prepared_transactions for sync
# tables, wal_level logical), trusting the compose network only. For trying capgate, not
# for keeping data.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]

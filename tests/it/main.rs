//! Integration tests: real PostgreSQL and MariaDB servers, the real proxy, real clients
//! (tokio-postgres, psql, pgbench, psycopg; the mariadb client, sysbench, mysql_async, PyMySQL,
//! Connector/J; node-postgres, pgJDBC, SQLAlchemy). One test binary, so the servers are started once.

mod support;

mod active_active;
mod active_active_entry;
mod admin;
mod admin_sql;
mod apply;
mod apply_order;
mod apply_profile;
mod apps;
mod async_mode;
mod bad_input;
mod bounded_indirect;
mod capture;
mod classify_mysql;
mod cli;
mod config_examples;
mod dashboard;
mod demo;
mod driver;
mod edge;
mod lifecycle;
mod limits;
mod mysql;
mod operator_cli;
mod policy;
mod psql;
mod python;
mod quorum;
mod replication;
mod sync_faults;
mod sync_sql;
mod sync_stress;
mod sync_values;
mod three_sites;
mod tls;
mod verify;
mod verify_cli;

//! Integration tests: real PostgreSQL servers, the real proxy, real clients (tokio-postgres,
//! psql, pgbench, psycopg). One test binary, so the servers are started once.

mod support;

mod admin;
mod admin_sql;
mod async_mode;
mod bad_input;
mod capture;
mod cli;
mod config_examples;
mod dashboard;
mod demo;
mod driver;
mod lifecycle;
mod operator_cli;
mod policy;
mod psql;
mod python;
mod replication;
mod sync_faults;
mod sync_values;
mod tls;
mod verify;
mod verify_cli;

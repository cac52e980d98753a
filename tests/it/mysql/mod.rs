//! The MySQL / MariaDB front end against a real MariaDB server: the mariadb client, sysbench,
//! mysql_async, PyMySQL, MariaDB Connector/J, authentication, the policy, the admin SQL
//! commands, bad input.

mod support;

mod admin_sql;
mod async_copy;
mod async_ddl;
mod async_ddl_forms;
mod async_holes;
mod async_interval;
mod async_order;
mod async_partitions;
mod async_prune;
mod async_reload;
mod async_ship;
mod async_truncate;
mod auth;
mod bad_input;
mod capture;
mod check_config;
mod client;
mod commands;
mod driver;
mod health;
mod jdbc;
mod lifecycle;
mod lock_tables;
mod policy;
mod python;
mod raw;
mod sync;
mod sync_ddl;
mod sync_faults;
mod sync_implicit;
mod sync_kill;
mod sync_parts;
mod sync_relay;
mod sync_sysbench;
mod sysbench;
mod verify;

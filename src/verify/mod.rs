//! `capgate verify`: does each replica hold the same rows as the primary?
//!
//! In the spirit of pt-table-checksum: each replicated table is walked in primary-key chunks,
//! a checksum per chunk is computed on both servers, and differing chunks are read row by row
//! to print the rows that differ (key, the primary's row, the replica's row, or missing).
//! Tables without a primary key are compared by a whole-table checksum only. Memory is bounded
//! by one chunk, so tables of millions of rows are fine.
//!
//! Consistent point: verify first waits (up to 30 s) until each replica has applied every
//! change the primary had committed when verify started (decision 0009), and says in its
//! report which point it compared at.
//!
//! Verify only reads: its sessions are `default_transaction_read_only`.
//!
//! MySQL and MariaDB sites are compared by [`mysql`]: the same walk and report, MySQL's
//! catalog, a collation-aware row fingerprint, and a consistent snapshot on each side.

pub mod compare;
pub mod mysql;
mod report;
pub mod sql;

use std::time::Instant;

use tokio_postgres::Client;

use crate::backend::postgres::{Upstream, UpstreamError};
pub use crate::classify::TableName;
use crate::config::Config;
pub use compare::{compare_table, compare_table_reporting, Limits, Progress, ProgressFn, RowDifference, TableResult};
pub use report::{ReplicaReport, Report, TableReport};
pub use sql::parse_table_name;

/// Why verify could not run at all (exit code 2). Each message names what failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot connect to {what}: {source}")]
    Connect { what: String, source: UpstreamError },
    #[error("{what}: {source}")]
    Query { what: String, source: tokio_postgres::Error },
    /// A MySQL / MariaDB server could not be reached or asked.
    #[error("{what}: {source}")]
    Mysql { what: String, source: mysql_async::Error },
    #[error("{0}")]
    Config(String),
    /// A table named with `--table` that the primary does not have.
    #[error("table {table} (from --table) does not exist on the primary {primary}")]
    NoSuchTable { table: String, primary: String },
}

/// Which tables to compare.
pub enum Selection {
    /// Exactly these (from `--table`).
    Named(Vec<TableName>),
    /// Every user table on the primary for which the predicate says "replicated".
    Replicated(Box<dyn Fn(&TableName) -> bool + Send + Sync>),
}

/// Row images (decision 0009): waits, up to 30 s, until the replica has applied every change
/// of the compared `tables` committed on the primary now, except those of tables halted on
/// the replica (they differ
/// until resumed, and verify says so). None when either side has no row-image schema.
async fn catch_up_snapshot(
    primary: &tokio_postgres::Client,
    replica: &tokio_postgres::Client,
    site: &str,
    tables: &[String],
) -> Option<String> {
    const PENDING: &str = "SELECT count(*) FROM capgate.changes WHERE pg_visible_in_snapshot(xid, $2::text::pg_snapshot) \
         AND ($1::text IS NULL OR (xid >= pg_snapshot_xmin($1::text::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot))) \
         AND tbl <> ALL ($3::text[]) AND tbl = ANY ($4::text[])";
    let target: String = primary.query_one("SELECT pg_current_snapshot()::text", &[]).await.ok()?.try_get(0).ok()?;
    primary.query("SELECT 1 FROM capgate.changes LIMIT 0", &[]).await.ok()?;
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let applied: Option<String> =
            match replica.query_opt("SELECT snapshot::text FROM capgate.applied WHERE origin = $1", &[&site]).await {
                Ok(row) => row.and_then(|r| r.try_get(0).ok()),
                Err(_) => return None,
            };
        let halted: Vec<String> = replica
            .query("SELECT tbl FROM capgate.tables WHERE origin = $1 AND state <> 'copied'", &[&site])
            .await
            .map(|rows| rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
            .unwrap_or_default();
        let pending: i64 = primary.query_one(PENDING, &[&applied, &target, &halted, &tables]).await.ok()?.try_get(0).ok()?;
        if pending == 0 {
            return Some(format!("after the replica applied every change committed on the primary at snapshot {target}"));
        }
        if Instant::now() >= deadline {
            return Some(format!(
                "compared as they are now: {pending} change(s) committed on the primary were not applied on the replica after 30 s, so they show as differences"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Compare the primary of `config` with each of its replicas.
pub async fn run(config: &Config, selection: &Selection, limits: Limits) -> Result<Report, VerifyError> {
    run_reporting(config, selection, limits, None).await
}

/// [`run`], calling `progress` after each chunk of each table.
pub async fn run_reporting(
    config: &Config,
    selection: &Selection,
    limits: Limits,
    progress: Option<ProgressFn>,
) -> Result<Report, VerifyError> {
    if config.primary.url.scheme == crate::config::Scheme::MySql {
        return mysql::run(config, selection, limits, progress).await;
    }
    let upstream = Upstream::new(config.primary.url.clone()).map_err(|e| VerifyError::Config(format!("the primary: {e}")))?;
    let primary = session(&upstream, "the primary").await?;
    let tables = match selection {
        Selection::Named(tables) => {
            for t in tables {
                let found: Option<String> = primary
                    .query_one("SELECT to_regclass($1)::text", &[&sql::quoted(t)])
                    .await
                    .map_err(|source| VerifyError::Query { what: format!("looking up {t} on the primary"), source })?
                    .get(0);
                if found.is_none() {
                    return Err(VerifyError::NoSuchTable { table: t.to_string(), primary: config.primary.url.address() });
                }
            }
            tables.clone()
        }
        Selection::Replicated(replicated) => primary
            .query(sql::USER_TABLES, &[])
            .await
            .map_err(|source| VerifyError::Query { what: "listing the primary's tables".into(), source })?
            .iter()
            .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .filter(|t| replicated(t))
            .collect(),
    };
    let mut replicas = Vec::new();
    for replica in &config.replicas {
        let upstream = Upstream::new(replica.url.clone()).map_err(|e| VerifyError::Config(format!("replica {}: {e}", replica.name)))?;
        let client = session(&upstream, &format!("replica {}", replica.name)).await?;
        let started = Instant::now();
        let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let consistent_point = catch_up(&primary, &client, &config.site, &names).await;
        let mut reports = Vec::new();
        for table in &tables {
            let result = match compare_table_reporting(&primary, &client, table, limits, progress).await {
                Ok(r) => r,
                Err(e) => TableResult::Error { message: e.to_string() },
            };
            reports.push(TableReport { table: table.to_string(), result });
        }
        replicas.push(ReplicaReport {
            replica: replica.name.clone(),
            address: replica.url.address(),
            consistent_point,
            tables: reports,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let diverged = replicas.iter().flat_map(|r| &r.tables).any(|t| t.result.diverged());
    let failed = replicas.iter().flat_map(|r| &r.tables).any(|t| matches!(t.result, TableResult::Error { .. }));
    Ok(Report { site: config.site.clone(), primary: config.primary.url.address(), replicas, diverged, failed, note: None })
}

async fn session(upstream: &Upstream, what: &str) -> Result<Client, VerifyError> {
    let client = upstream
        .client("capgate verify")
        .await
        .map_err(|source| VerifyError::Connect { what: format!("{what} at {}", upstream.url.address()), source })?;
    client
        .batch_execute(sql::SESSION_SETUP)
        .await
        .map_err(|source| VerifyError::Query { what: format!("setting up the session on {what}"), source })?;
    Ok(client)
}

/// Wait (up to 30 s) until the replica has applied every change the primary committed so
/// far, so async tables are compared at a consistent point; say which point it was.
async fn catch_up(primary: &tokio_postgres::Client, replica: &tokio_postgres::Client, site: &str, tables: &[String]) -> String {
    match catch_up_snapshot(primary, replica, site, tables).await {
        Some(point) => point,
        None => "compared as they are now (no capgate change stream on the primary or the replica)".into(),
    }
}

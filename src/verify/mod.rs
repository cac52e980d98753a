//! `capgate verify`: does each replica hold the same rows as the primary?
//!
//! In the spirit of pt-table-checksum: each replicated table is walked in primary-key chunks,
//! a checksum per chunk is computed on both servers, and differing chunks are read row by row
//! to print the rows that differ (key, the primary's row, the replica's row, or missing).
//! Tables without a primary key are compared by a whole-table checksum only. Memory is bounded
//! by one chunk, so tables of millions of rows are fine.
//!
//! Consistent point: today the servers are compared as they are. Once asynchronous
//! replication exists, verify first waits for each replica's applied watermark to reach the
//! primary's outbox position.
//!
//! Verify only reads: its sessions are `default_transaction_read_only`.

pub mod compare;
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
        let consistent_point = catch_up(&primary, &client, &config.site).await;
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

/// Wait (up to 30 s) until the replica has applied every outbox row the primary committed so
/// far, so async tables are compared at a consistent point; say which point it was.
async fn catch_up(primary: &tokio_postgres::Client, replica: &tokio_postgres::Client, site: &str) -> String {
    let target =
        match primary.query_opt("SELECT coalesce(max(seq), 0) FROM capgate.outbox WHERE seq IS NOT NULL AND origin = $1", &[&site]).await {
            Ok(Some(row)) => row.get::<_, i64>(0),
            _ => return "compared as they are now (the primary has no capgate outbox)".into(),
        };
    if target == 0 {
        return "compared as they are now (nothing in the outbox to wait for)".into();
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let applied = match replica.query_opt("SELECT seq FROM capgate.applied WHERE origin = $1", &[&site]).await {
            Ok(row) => row.map_or(0, |r| r.get::<_, i64>(0)),
            Err(_) => return "compared as they are now (the replica has no capgate watermark)".into(),
        };
        if applied >= target {
            return format!("after the replica applied the outbox up to seq {target}");
        }
        if Instant::now() >= deadline {
            return format!("compared as they are now: the replica has applied the outbox up to seq {applied} of {target}, so rows of async tables still queued show as differences");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

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
pub mod sql;

use std::time::Instant;

use tokio_postgres::Client;

use crate::backend::postgres::{Upstream, UpstreamError};
use crate::config::Config;
pub use compare::{compare_table, Limits, RowDifference, TableResult};
pub use sql::TableName;

/// Why verify could not run at all (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot connect to {what}: {source}")]
    Connect { what: String, source: UpstreamError },
    #[error("{what}: {source}")]
    Query { what: String, source: tokio_postgres::Error },
    #[error("{0}")]
    Config(String),
}

/// The outcome for one table on one replica.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    #[serde(flatten)]
    pub result: TableResult,
}

/// The outcome for one replica.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaReport {
    pub replica: String,
    pub address: String,
    /// How the consistent point was chosen.
    pub consistent_point: String,
    pub tables: Vec<TableReport>,
    pub seconds: f64,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub site: String,
    pub primary: String,
    pub replicas: Vec<ReplicaReport>,
    pub diverged: bool,
}

impl Report {
    /// 0 when every table is equal everywhere, 1 when anything diverged.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.diverged)
    }

    /// The human summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.replicas {
            out.push_str(&format!(
                "verify: site {} primary {} vs replica {} ({}); {}\n",
                self.site, self.primary, r.replica, r.address, r.consistent_point
            ));
            if r.tables.is_empty() {
                out.push_str("  no replicated tables to compare (the policy marks none, or --table named none)\n");
            }
            for t in &r.tables {
                out.push_str(&format!("  {:<40} ", t.table));
                match &t.result {
                    TableResult::Equal { rows, chunks } => out.push_str(&format!("equal      {rows} rows in {chunks} chunk(s)\n")),
                    TableResult::Diverged { rows_primary, rows_replica, chunks, chunks_diverged, rows_differing, differences } => {
                        out.push_str(&format!(
                            "DIVERGED   {rows_differing} row(s) differ in {chunks_diverged} of {chunks} chunk(s); primary {rows_primary} rows, replica {rows_replica}\n"
                        ));
                        for d in differences {
                            let key = d.key.join(", ");
                            match (&d.primary, &d.replica) {
                                (Some(p), Some(q)) => out.push_str(&format!("      key ({key}): primary {p} | replica {q}\n")),
                                (Some(p), None) => out.push_str(&format!("      key ({key}): missing on the replica; primary {p}\n")),
                                (None, Some(q)) => out.push_str(&format!("      key ({key}): only on the replica: {q}\n")),
                                (None, None) => {}
                            }
                        }
                        if *rows_differing > differences.len() as u64 {
                            out.push_str(&format!("      … and {} more\n", rows_differing - differences.len() as u64));
                        }
                    }
                    TableResult::NoPrimaryKey { equal: true, rows_primary, .. } => {
                        out.push_str(&format!("equal      {rows_primary} rows (no primary key: whole-table checksum)\n"))
                    }
                    TableResult::NoPrimaryKey { equal: false, rows_primary, rows_replica } => out.push_str(&format!(
                        "DIVERGED   whole-table checksums differ (primary {rows_primary} rows, replica {rows_replica}); no primary key, so rows cannot be pinpointed\n"
                    )),
                    TableResult::MissingOnReplica => out.push_str("DIVERGED   the table does not exist on the replica\n"),
                    TableResult::Error { message } => out.push_str(&format!("ERROR      {message}\n")),
                }
            }
        }
        let tables: usize = self.replicas.iter().map(|r| r.tables.len()).sum();
        let bad: usize = self.replicas.iter().flat_map(|r| &r.tables).filter(|t| t.result.diverged()).count();
        out.push_str(&format!(
            "summary: {tables} table comparison(s), {} equal, {bad} diverged\n",
            tables - bad - self.replicas.iter().flat_map(|r| &r.tables).filter(|t| matches!(t.result, TableResult::Error { .. })).count()
        ));
        out
    }
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
    let primary = session(&Upstream::new(config.primary.url.clone()).map_err(|e| VerifyError::Config(e.to_string()))?, "the primary").await?;
    let tables = match selection {
        Selection::Named(t) => t.clone(),
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
        let mut reports = Vec::new();
        for table in &tables {
            let result = match compare_table(&primary, &client, table, limits).await {
                Ok(r) => r,
                Err(e) => TableResult::Error { message: e.to_string() },
            };
            reports.push(TableReport { table: table.to_string(), result });
        }
        replicas.push(ReplicaReport {
            replica: replica.name.clone(),
            address: replica.url.address(),
            consistent_point: "compared as they are now (no asynchronous replication is configured yet)".into(),
            tables: reports,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let diverged = replicas.iter().flat_map(|r| &r.tables).any(|t| t.result.diverged());
    Ok(Report { site: config.site.clone(), primary: config.primary.url.address(), replicas, diverged })
}

async fn session(upstream: &Upstream, what: &str) -> Result<Client, VerifyError> {
    let client = upstream.client("capgate verify").await.map_err(|source| VerifyError::Connect { what: format!("{what} at {}", upstream.url.address()), source })?;
    client.batch_execute(sql::SESSION_SETUP).await.map_err(|source| VerifyError::Query { what: format!("setting up the session on {what}"), source })?;
    Ok(client)
}

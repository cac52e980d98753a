//! Comparing one table between the primary and one replica, in primary-key chunks.
//!
//! The primary's keys cut the table into chunks of `chunk_rows` rows. Each chunk's row count
//! and checksum are computed on both servers at once; only chunks that differ are read row by
//! row. Memory stays bounded by one chunk of the primary plus the differences kept for the
//! report, however large the table: the replica's rows of a differing chunk are streamed.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use tokio_postgres::Client;

use super::sql::{self, Shape};
use crate::classify::TableName;

/// How one table compared.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TableResult {
    /// Same rows on both sides.
    Equal { rows: u64, chunks: u64 },
    /// Rows differ; `differences` lists the first ones found (at most the configured number),
    /// `rows_differing` counts them all.
    Diverged {
        rows_primary: u64,
        rows_replica: u64,
        chunks: u64,
        chunks_diverged: u64,
        rows_differing: u64,
        differences: Vec<RowDifference>,
    },
    /// No primary key: only whole-table checksums could be compared.
    NoPrimaryKey { equal: bool, rows_primary: u64, rows_replica: u64 },
    /// The table is missing on the replica.
    MissingOnReplica,
    /// The comparison failed (e.g. the replica's columns differ); the message says how.
    Error { message: String },
}

impl TableResult {
    pub fn diverged(&self) -> bool {
        matches!(self, TableResult::Diverged { .. } | TableResult::NoPrimaryKey { equal: false, .. } | TableResult::MissingOnReplica)
    }
}

/// One row that differs: its key, and its text on each side (`None`: missing there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowDifference {
    pub key: Vec<String>,
    pub primary: Option<String>,
    pub replica: Option<String>,
}

/// Tuning of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows per chunk.
    pub chunk_rows: usize,
    /// Differing rows kept for the report per table (all are counted).
    pub max_differences: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { chunk_rows: 1000, max_differences: 100 }
    }
}

/// Called after each chunk, so a terminal can show how far a large table is.
pub type ProgressFn = fn(&Progress<'_>);

/// How far the comparison of one table is.
#[derive(Debug)]
pub struct Progress<'a> {
    pub table: &'a TableName,
    /// Rows of the primary compared so far.
    pub rows: u64,
    /// The primary's own estimate of the table's rows (`pg_class.reltuples`), if it has one.
    pub estimate: Option<u64>,
}

/// What one table's chunk walk has found so far: the PostgreSQL and the MySQL walk keep one
/// each, so both count and report alike.
#[derive(Default)]
pub(crate) struct Tally {
    chunks: u64,
    chunks_diverged: u64,
    rows_primary: u64,
    rows_replica: u64,
    pub(crate) rows_differing: u64,
    pub(crate) differences: Vec<RowDifference>,
}

impl Tally {
    /// Counts one chunk's (rows, checksum) on each side and reports progress; true when the
    /// two differ (the caller then pinpoints the rows).
    pub(crate) fn chunk(
        &mut self,
        p: &(u64, String),
        r: &(u64, String),
        table: &TableName,
        estimate: Option<u64>,
        progress: Option<ProgressFn>,
    ) -> bool {
        self.chunks += 1;
        self.rows_primary += p.0;
        self.rows_replica += r.0;
        if let Some(report) = progress {
            report(&Progress { table, rows: self.rows_primary, estimate });
        }
        let diverged = p != r;
        self.chunks_diverged += u64::from(diverged);
        diverged
    }

    /// The table's result once every chunk is counted.
    pub(crate) fn result(self) -> TableResult {
        let Tally { chunks, chunks_diverged, rows_primary, rows_replica, rows_differing, differences } = self;
        if chunks_diverged == 0 {
            TableResult::Equal { rows: rows_primary, chunks }
        } else {
            TableResult::Diverged { rows_primary, rows_replica, chunks, chunks_diverged, rows_differing, differences }
        }
    }
}

/// Compare `table` between `primary` and `replica`.
pub async fn compare_table(
    primary: &Client,
    replica: &Client,
    table: &TableName,
    limits: Limits,
) -> Result<TableResult, tokio_postgres::Error> {
    compare_table_reporting(primary, replica, table, limits, None).await
}

/// [`compare_table`], calling `progress` after each chunk.
pub async fn compare_table_reporting(
    primary: &Client,
    replica: &Client,
    table: &TableName,
    limits: Limits,
    progress: Option<ProgressFn>,
) -> Result<TableResult, tokio_postgres::Error> {
    let quoted = sql::quoted(table);
    let exists: Option<String> = replica.query_one("SELECT to_regclass($1)::text", &[&quoted]).await?.get(0);
    if exists.is_none() {
        return Ok(TableResult::MissingOnReplica);
    }
    let key: Vec<String> = primary.query(sql::PRIMARY_KEY, &[&quoted]).await?.iter().map(|r| r.get(0)).collect();
    let columns: Vec<String> = primary.query(sql::COLUMNS, &[&quoted]).await?.iter().map(|r| r.get(0)).collect();
    let shape = Shape { table: table.clone(), key, columns };

    if shape.key.is_empty() {
        let q = shape.checksum_query("true");
        let (p, r) = match tokio::try_join!(checksum(primary, &q), checksum(replica, &q)) {
            Ok(x) => x,
            Err(e) => return Ok(TableResult::Error { message: e.to_string() }),
        };
        return Ok(TableResult::NoPrimaryKey { equal: p == r, rows_primary: p.0, rows_replica: r.0 });
    }

    let estimate = match progress {
        Some(_) => {
            let q = "SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass($1)";
            primary.query_opt(q, &[&quoted]).await?.map(|r| r.get::<_, f64>(0)).filter(|n| *n >= 0.0).map(|n| n as u64)
        }
        None => None,
    };
    let mut lower: Option<Vec<String>> = None;
    let mut tally = Tally::default();
    loop {
        let upper: Option<Vec<String>> = primary
            .query_opt(&shape.boundary_query(lower.as_deref(), limits.chunk_rows), &[])
            .await?
            .map(|row| (0..shape.key.len()).map(|i| row.get::<_, String>(i)).collect());
        let range = shape.range(lower.as_deref(), upper.as_deref());
        let q = shape.checksum_query(&range);
        let (p, r) = match tokio::try_join!(checksum(primary, &q), checksum(replica, &q)) {
            Ok(x) => x,
            Err(e) => return Ok(TableResult::Error { message: format!("{e} (do both sides have the same columns?)") }),
        };
        if tally.chunk(&p, &r, table, estimate, progress) {
            tally.rows_differing += pinpoint(primary, replica, &shape, &range, limits.max_differences, &mut tally.differences).await?;
        }
        match upper {
            Some(u) => lower = Some(u),
            None => break,
        }
    }
    Ok(tally.result())
}

async fn checksum(client: &Client, query: &str) -> Result<(u64, String), tokio_postgres::Error> {
    let row = client.query_one(query, &[]).await?;
    Ok((row.get::<_, i64>(0) as u64, row.get(1)))
}

/// Find the differing rows of one chunk; returns how many there are, keeping at most `max`
/// of them in `out`.
async fn pinpoint(
    primary: &Client,
    replica: &Client,
    shape: &Shape,
    range: &str,
    max: usize,
    out: &mut Vec<RowDifference>,
) -> Result<u64, tokio_postgres::Error> {
    let q = shape.rows_query(range);
    let mut mine: HashMap<Vec<String>, String> =
        primary.query(&q, &[]).await?.iter().map(|r| (r.get::<_, Vec<String>>(0), r.get::<_, String>(1))).collect();
    let mut count = 0u64;
    let mut keep = |d: RowDifference, out: &mut Vec<RowDifference>| {
        count += 1;
        if out.len() < max {
            out.push(d);
        }
    };
    let stream = replica.query_raw(&q, std::iter::empty::<&str>()).await?;
    let mut stream = std::pin::pin!(stream);
    while let Some(row) = stream.try_next().await? {
        let key: Vec<String> = row.get(0);
        let theirs: String = row.get(1);
        match mine.remove(&key) {
            Some(ours) if ours == theirs => {}
            Some(ours) => keep(RowDifference { key, primary: Some(ours), replica: Some(theirs) }, out),
            None => keep(RowDifference { key, primary: None, replica: Some(theirs) }, out),
        }
    }
    let mut missing: Vec<_> = mine.into_iter().collect();
    missing.sort();
    for (key, ours) in missing {
        keep(RowDifference { key, primary: Some(ours), replica: None }, out);
    }
    Ok(count)
}

//! `capgate verify` on a MySQL / MariaDB site: the same walk, report and exit codes as
//! PostgreSQL's, with MySQL's catalog and its own row fingerprint ([`sql`] says how a row is
//! compared: NULL-safe, and by the collation for text).
//!
//! Consistent point: first, as for PostgreSQL, verify waits (up to 30 s) until the replica
//! has applied every change of the compared tables that the primary had committed when
//! verify started (the replica's position in `capgate.applied`, decision 0021); then it opens
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY` on the primary and on the replica
//! and compares every table inside those two snapshots. Async changes committed after the
//! first step may be in one snapshot and not yet in the other: they show as differences, and
//! a second run tells a lag from a divergence. Verify only reads.

pub mod compare;
pub mod sql;

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::{ProgressFn, ReplicaReport, Report, Selection, TableReport, TableResult, VerifyError};
use crate::classify::TableName;
use crate::config::{Config, DbUrl};
use crate::store::mysql::position::Position;
use crate::store::mysql::xa;
use crate::verify::Limits;

/// How long verify waits for the replica to apply what the primary had committed.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Compare the MySQL primary of `config` with each of its replicas.
pub async fn run(config: &Config, selection: &Selection, limits: Limits, progress: Option<ProgressFn>) -> Result<Report, VerifyError> {
    let mut primary = session(&config.primary.url, "the primary").await?;
    let tables = tables(&mut primary, selection, config).await?;
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let mut replicas = Vec::new();
    for replica in &config.replicas {
        let what = format!("replica {}", replica.name);
        let mut conn = session(&replica.url, &what).await?;
        let started = Instant::now();
        let caught_up = catch_up(&mut primary, &mut conn, &config.site, &names).await;
        let open = |what: String| move |source| VerifyError::Mysql { what: format!("opening the consistent snapshot on {what}"), source };
        primary.query_drop(sql::SNAPSHOT).await.map_err(open("the primary".into()))?;
        conn.query_drop(sql::SNAPSHOT).await.map_err(open(what.clone()))?;
        let mut reports = Vec::new();
        for table in &tables {
            let result = match compare::compare_table(&mut primary, &mut conn, table, limits, progress).await {
                Ok(r) => r,
                Err(e) => TableResult::Error { message: e.to_string() },
            };
            reports.push(TableReport { table: table.to_string(), result });
        }
        let _ = tokio::join!(primary.query_drop("COMMIT"), conn.query_drop("COMMIT"));
        let _ = conn.disconnect().await;
        replicas.push(ReplicaReport {
            replica: replica.name.clone(),
            address: replica.url.address(),
            consistent_point: format!(
                "{caught_up}, then in a consistent snapshot on each side (START TRANSACTION WITH CONSISTENT SNAPSHOT)"
            ),
            tables: reports,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let _ = primary.disconnect().await;
    let diverged = replicas.iter().flat_map(|r| &r.tables).any(|t| t.result.diverged());
    let failed = replicas.iter().flat_map(|r| &r.tables).any(|t| matches!(t.result, TableResult::Error { .. }));
    Ok(Report { site: config.site.clone(), primary: config.primary.url.address(), replicas, diverged, failed, note: None })
}

/// A read-only verify session on `url`.
async fn session(url: &DbUrl, what: &str) -> Result<Conn, VerifyError> {
    let mut conn = xa::connect(url)
        .await
        .map_err(|source| VerifyError::Mysql { what: format!("cannot connect to {what} at {}", url.address()), source })?;
    conn.query_drop(sql::SESSION_SETUP)
        .await
        .map_err(|source| VerifyError::Mysql { what: format!("setting up the session on {what}"), source })?;
    Ok(conn)
}

/// The tables to compare, checked to exist on the primary when named.
async fn tables(primary: &mut Conn, selection: &Selection, config: &Config) -> Result<Vec<TableName>, VerifyError> {
    match selection {
        Selection::Named(tables) => {
            for t in tables {
                let found: Option<u64> = primary
                    .exec_first(sql::EXISTS, (t.schema.as_str(), t.name.as_str()))
                    .await
                    .map_err(|source| VerifyError::Mysql { what: format!("looking up {t} on the primary"), source })?;
                if found.unwrap_or(0) == 0 {
                    return Err(VerifyError::NoSuchTable { table: t.to_string(), primary: config.primary.url.address() });
                }
            }
            Ok(tables.clone())
        }
        Selection::Replicated(replicated) => {
            let all: Vec<(String, String)> = primary
                .query(sql::USER_TABLES)
                .await
                .map_err(|source| VerifyError::Mysql { what: "listing the primary's tables".into(), source })?;
            Ok(all.into_iter().map(|(db, t)| TableName::new(db, t)).filter(|t| replicated(t)).collect())
        }
    }
}

/// Wait (up to 30 s) until the replica has applied every change of `tables` the primary had
/// committed when verify started; say which point that was.
async fn catch_up(primary: &mut Conn, replica: &mut Conn, site: &str, tables: &[String]) -> String {
    match catch_up_to(primary, replica, site, tables).await {
        Ok(Some(point)) => point,
        Ok(None) | Err(_) => "compared as they are now (no capgate change stream on the primary or the replica)".into(),
    }
}

async fn catch_up_to(primary: &mut Conn, replica: &mut Conn, site: &str, tables: &[String]) -> Result<Option<String>, mysql_async::Error> {
    let Some(target) = primary.query_first::<Option<u64>, _>("SELECT MAX(seq) FROM capgate.changes").await?.flatten() else {
        return Ok(Some("after the replica applied every change committed on the primary (none were pending)".into()));
    };
    if tables.is_empty() {
        return Ok(Some(format!("after the replica applied every change committed on the primary up to change {target}")));
    }
    let list = tables.iter().map(|t| sql::literal(t)).collect::<Vec<_>>().join(", ");
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let row: Option<(u64, String)> = replica.exec_first("SELECT high, holes FROM capgate.applied WHERE origin = ?", (site,)).await?;
        let position = match row {
            Some((high, holes)) => Position::parse(high, &holes).unwrap_or_default(),
            None => Position::default(),
        };
        let pending: Option<u64> = primary
            .query_first(format!(
                "SELECT COUNT(*) FROM capgate.changes WHERE seq <= {target} AND {} AND tbl IN ({list})",
                position.pending_sql()
            ))
            .await?;
        let pending = pending.unwrap_or(0);
        if pending == 0 {
            return Ok(Some(format!("after the replica applied every change committed on the primary up to change {target}")));
        }
        if Instant::now() >= deadline {
            return Ok(Some(format!(
                "compared as they are now: {pending} change(s) committed on the primary were not applied on the replica after 30 s, so they show as differences"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

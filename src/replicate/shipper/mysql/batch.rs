//! One batch on a MySQL replica (decision 0021): applied with the position's move in one
//! transaction — the statements and the move in one round trip, the COMMIT in a second once
//! every statement's row count checked out (decision 0039) —, its changes regrouped by key
//! ([`crate::store::mysql::order`]) and merged ([`crate::store::mysql::batched`]); when that
//! meets a conflict, applied again change by change in capture order in a new transaction,
//! where each conflict is read (the replica's row), recorded and resolved by the table's
//! `on_conflict`.

use mysql_async::prelude::Queryable;
use serde_json::Value;

use crate::policy::OnConflict;
use crate::replicate::apply::Conflict;
use crate::store::mysql::apply::{self, ApplyError, Tables};
use crate::store::mysql::order::Free;
use crate::store::mysql::position::Position;
use crate::store::mysql::resolve;
use crate::store::mysql::ship::{self, Shipped};

use super::super::ConflictPolicy;

/// SQLSTATE `capgate.expect_rows` raises on a missing or different row.
const CONFLICT_STATE: &str = "CGC01";
/// ER_DUP_ENTRY: an insert whose key the replica already has.
const DUP_ENTRY: u16 = 1062;

/// How a batch ended.
pub enum Outcome {
    /// Committed, with the conflicts met and resolved on the way.
    Applied(Vec<Conflict>),
    /// A conflict on a table whose `on_conflict` is `halt`: nothing committed.
    Halted(Box<Conflict>),
}

/// Why a batch could not be applied (retried after a backoff; the caller drops the
/// connection, so the server rolls back whatever is left open).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("applying a batch on the replica: {0}")]
    Replica(mysql_async::Error),
    #[error("a change cannot be applied: {0}")]
    Change(ApplyError),
    #[error("{0}")]
    Tables(ship::ShipError),
    /// Another step of a carried statement's table runs on the replica (nothing done).
    #[error("{0}")]
    Busy(String),
}

/// Whether a replica error is a row conflict (then the batch is applied change by change).
fn is_conflict(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.state == CONFLICT_STATE || s.code == DUP_ENTRY)
}

/// Applies `batch` (or the one carried DDL statement it holds, [`super::ddl::apply`]) and moves
/// the replica's position from `from` to `to`. `tables` and `free`: the replica's tables and
/// those whose changes are regrouped by key ([`crate::store::mysql::order`]), as last read;
/// read again (once) when a change names a table or column not in them — DDL run around
/// capgate (an operator adds a column on the replica, then on the primary, while the shipper
/// runs) — before that counts as a conflict, and when the regrouped batch fails with a server error that is not a conflict
/// (a foreign key added on the replica since the read binds the order of its rows).
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    conn: &mut mysql_async::Conn,
    origin: &str,
    batch: &[Shipped],
    tables: &mut Tables,
    free: &mut Free,
    from: &Position,
    to: &Position,
    on_conflict: &ConflictPolicy,
) -> Result<Outcome, BatchError> {
    // A carried DDL statement is read as a batch of its own (decision 0040).
    if let [s] = batch {
        if s.change.op == crate::store::mysql::ddl::OP {
            return super::ddl::apply(conn, origin, s, tables, free, from, to, on_conflict).await;
        }
    }
    let advance = ship::advance_sql(origin, from, to);
    for fresh in [false, true] {
        let stale = match ship::batched_statements(batch, tables, free) {
            Ok(text) => match ship::apply_counted(conn, &text, &advance).await {
                Ok(ship::Counted::Committed) => return Ok(Outcome::Applied(Vec::new())),
                Ok(ship::Counted::CountDiffers) => break,
                Err(e) if is_conflict(&e) => break,
                Err(e @ mysql_async::Error::Server(_)) if !fresh && !free.0.is_empty() => {
                    tracing::info!(error = %e, "shipper: a regrouped batch failed; reading the replica's keys again");
                    true
                }
                Err(e) => return Err(BatchError::Replica(e)),
            },
            Err(ApplyError::MissingTable(_) | ApplyError::MissingColumn { .. }) if !fresh => true,
            Err(ApplyError::MissingTable(_) | ApplyError::MissingColumn { .. }) => break,
            Err(e) => return Err(BatchError::Change(e)),
        };
        if stale {
            (*tables, *free) = ship::replica_catalog(conn).await.map_err(BatchError::Tables)?;
        }
    }
    one_by_one(conn, origin, batch, tables, &advance, on_conflict).await
}

/// The slow path: each change on its own, conflicts resolved as they come, then the advance
/// and COMMIT.
async fn one_by_one(
    conn: &mut mysql_async::Conn,
    origin: &str,
    batch: &[Shipped],
    tables: &Tables,
    advance: &str,
    on_conflict: &ConflictPolicy,
) -> Result<Outcome, BatchError> {
    conn.query_drop("START TRANSACTION").await.map_err(BatchError::Replica)?;
    let mut found = Vec::new();
    for s in batch {
        let (kind, replica_row, detail) = match apply::statements(std::slice::from_ref(&s.change), tables) {
            Ok(sql) => match conn.query_drop(sql).await {
                Ok(()) => continue,
                Err(e) if is_conflict(&e) => {
                    let row: Option<String> = match resolve::replica_row_sql(&s.change, tables) {
                        Ok(q) => conn.query_first(q).await.map_err(BatchError::Replica)?,
                        Err(_) => None,
                    };
                    (resolve::kind(&s.change, row.is_some()).to_owned(), row, e.to_string())
                }
                Err(e) => {
                    let _ = conn.query_drop("ROLLBACK").await;
                    return Err(BatchError::Replica(e));
                }
            },
            Err(e @ ApplyError::MissingTable(_)) => ("missing_table".to_owned(), None, e.to_string()),
            Err(e @ ApplyError::MissingColumn { .. }) => ("missing_column".to_owned(), None, e.to_string()),
            Err(e) => {
                let _ = conn.query_drop("ROLLBACK").await;
                return Err(BatchError::Change(e));
            }
        };
        let schema_differs = kind.starts_with("missing_");
        let policy = on_conflict(&s.change.tbl);
        let resolution = match policy {
            OnConflict::Skip => "skipped",
            OnConflict::Overwrite | OnConflict::Latest if !schema_differs => "overwritten with the new row",
            _ => "halted",
        };
        let conflict = conflict(origin, s, &kind, replica_row, resolution, detail);
        if resolution == "halted" {
            let _ = conn.query_drop("ROLLBACK").await;
            return Ok(Outcome::Halted(Box::new(conflict)));
        }
        if resolution != "skipped" {
            let sql = resolve::overwrite_sql(&s.change, tables).map_err(BatchError::Change)?;
            conn.query_drop(sql).await.map_err(BatchError::Replica)?;
        }
        found.push(conflict);
    }
    let end = format!("{advance}COMMIT");
    match conn.query_drop(end).await {
        Ok(()) => Ok(Outcome::Applied(found)),
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            Err(BatchError::Replica(e))
        }
    }
}

fn json(text: &Option<String>) -> Option<Value> {
    text.as_deref().map(|t| serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned())))
}

pub(super) fn conflict(origin: &str, s: &Shipped, kind: &str, replica: Option<String>, resolution: &str, detail: String) -> Conflict {
    Conflict {
        origin: origin.to_owned(),
        seq: i64::try_from(s.change.seq).ok(),
        at: serde_json::Number::from_f64(s.at).map(Value::Number),
        tbl: s.change.tbl.clone(),
        op: s.change.op.clone(),
        kind: kind.to_owned(),
        old: json(&s.change.old),
        new: json(&s.change.new),
        replica: json(&replica),
        resolution: resolution.to_owned(),
        detail: Some(detail),
    }
}

//! Tables halted alone on a MySQL replica (decision 0021, "halting one table"): the SQL.
//!
//! A conflict on a table whose `on_conflict` is `halt` stops that table only. Its changes from
//! the first one that could not be applied (`from_seq`) are **held**: the shipper's position
//! moves past them with the other tables' changes, so they stay in the primary's
//! `capgate.changes`, protected from pruning, until an operator resumes the table; then they
//! are applied in `seq` order, in one replica transaction that also ends the halt.
//!
//! - Replica: `capgate.halted(origin, tbl, from_seq, error)` is the truth (read at the start
//!   of every shipping session), written before any batch that skips the table commits;
//! - Primary: `capgate.held(replica, tbl, from_seq)` mirrors it for pruning, written before
//!   the replica's record, so a held change is never pruned whatever fails in between.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;

use super::image::quote_literal;
use super::position::Position;
use super::ship::{read_where, ShipError, Shipped};

/// On the replica: the tables halted per origin.
pub const HALTED_TABLE: &str = "CREATE TABLE IF NOT EXISTS capgate.halted (
        origin VARCHAR(128) NOT NULL,
        tbl VARCHAR(400) NOT NULL,
        from_seq BIGINT UNSIGNED NOT NULL,
        error LONGTEXT NOT NULL,
        since DATETIME(6) NOT NULL,
        PRIMARY KEY (origin, tbl)
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";

/// On the primary: the changes held for a halted table, per replica (pruning keeps them).
pub const HELD_TABLE: &str = "CREATE TABLE IF NOT EXISTS capgate.held (
        replica VARCHAR(128) NOT NULL,
        tbl VARCHAR(400) NOT NULL,
        from_seq BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (replica, tbl)
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";

fn server(what: &'static str) -> impl FnOnce(mysql_async::Error) -> ShipError {
    move |source| ShipError::Server { what, source }
}

/// One halted table: where its held changes start, and why it halted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub from_seq: u64,
    pub error: String,
}

/// The tables halted on the replica for `origin` (creating the record table if needed).
pub async fn halted(replica: &mut mysql_async::Conn, origin: &str) -> Result<BTreeMap<String, Halt>, ShipError> {
    replica.query_drop(HALTED_TABLE).await.map_err(server("creating capgate.halted on the replica"))?;
    let rows: Vec<(String, u64, String)> = replica
        .exec("SELECT tbl, from_seq, error FROM capgate.halted WHERE origin = ?", (origin,))
        .await
        .map_err(server("reading the replica's halted tables"))?;
    Ok(rows.into_iter().map(|(tbl, from_seq, error)| (tbl, Halt { from_seq, error })).collect())
}

/// Records on the replica that `tbl` is halted from `from_seq` (an earlier start is kept).
pub async fn halt(replica: &mut mysql_async::Conn, origin: &str, tbl: &str, halt: &Halt) -> Result<(), ShipError> {
    replica
        .exec_drop(
            "INSERT INTO capgate.halted (origin, tbl, from_seq, error, since) VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE from_seq = LEAST(from_seq, VALUES(from_seq)), error = VALUES(error)",
            (origin, tbl, halt.from_seq, &halt.error),
        )
        .await
        .map_err(server("recording a halted table on the replica"))
}

/// Keeps `tbl`'s changes from `from_seq` on the primary for `replica` (an earlier start is kept).
pub async fn hold(primary: &mut mysql_async::Conn, replica: &str, tbl: &str, from_seq: u64) -> Result<(), ShipError> {
    primary.query_drop(HELD_TABLE).await.map_err(server("creating capgate.held on the primary"))?;
    primary
        .exec_drop(
            "INSERT INTO capgate.held (replica, tbl, from_seq) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE from_seq = LEAST(from_seq, VALUES(from_seq))",
            (replica, tbl, from_seq),
        )
        .await
        .map_err(server("holding a halted table's changes on the primary"))
}

/// Stops holding `tbl`'s changes for `replica` (after it was resumed).
pub async fn release(primary: &mut mysql_async::Conn, replica: &str, tbl: &str) -> Result<(), ShipError> {
    // No table: nothing was ever held here.
    super::missing_is_empty(primary.exec_drop("DELETE FROM capgate.held WHERE replica = ? AND tbl = ?", (replica, tbl)).await)
        .map_err(server("releasing a resumed table's changes on the primary"))
}

/// The lowest `seq` some halted table still holds (pruning stays below it). No table yet
/// (nothing was ever held) is nothing held: it runs at every prune and every sync DDL
/// statement's catch-up, and [`hold`] creates the table.
pub async fn floor(primary: &mut mysql_async::Conn) -> Result<Option<u64>, ShipError> {
    let min: Option<Option<u64>> = super::missing_is_empty(primary.query_first("SELECT MIN(from_seq) FROM capgate.held").await)
        .map_err(server("reading held changes"))?;
    Ok(min.flatten())
}

/// The changes of `tbl` held since `from_seq` that the position `pos` has passed (the rest
/// come with the ordinary batches, after these), in `seq` order.
pub async fn backlog(primary: &mut mysql_async::Conn, tbl: &str, from_seq: u64, pos: &Position) -> Result<Vec<Shipped>, ShipError> {
    let condition = format!("tbl = {} AND seq >= {from_seq} AND NOT {}", quote_literal(tbl), pos.pending_sql());
    read_where(primary, &condition).await
}

/// The statement that moves the start of `tbl`'s held changes to `from_seq` on the replica
/// (a resume that applied the ones before it, up to a carried DDL statement, decision 0040),
/// checked to change exactly one row.
pub fn advance_halt_sql(origin: &str, tbl: &str, from_seq: u64) -> String {
    format!(
        "UPDATE capgate.halted SET from_seq = {from_seq} WHERE origin = {} AND tbl = {};\
         SET @capgate_rows = capgate.expect_rows(ROW_COUNT(), 1, {});",
        quote_literal(origin),
        quote_literal(tbl),
        quote_literal(&format!("the halt of {tbl}"))
    )
}

/// The statement that ends the halt of `tbl` on the replica, checked to remove exactly one
/// row (another shipper that resumed it first makes the resume fail).
pub fn resume_sql(origin: &str, tbl: &str) -> String {
    format!(
        "DELETE FROM capgate.halted WHERE origin = {} AND tbl = {};SET @capgate_rows = capgate.expect_rows(ROW_COUNT(), 1, {});",
        quote_literal(origin),
        quote_literal(tbl),
        quote_literal(&format!("the halt of {tbl}"))
    )
}

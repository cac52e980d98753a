//! The initial copy of a table to a MySQL / MariaDB replica (decision 0030): the SQL.
//!
//! A table entering an async or bounded rule is copied from the primary inside one
//! consistent snapshot (`START TRANSACTION WITH CONSISTENT SNAPSHOT`), which also reads
//! which `capgate.changes` it sees: a [`Position`] (the *gate*) that says, for every change
//! the replica's position had not applied, whether the copy already holds it. The replica
//! records the table and its gate in `capgate.entered`, in the transaction that loads the
//! rows; a later change of the table is applied only if the gate says the copy did not see
//! it (its transaction was open, or not begun, at the snapshot).
//!
//! Never done here: emptying a replica table whose site takes writes (the caller refuses).

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;

use super::capture::{self, CaptureMode};
use super::image::{quote_ident, quote_literal};
use super::position::Position;
use crate::classify::TableName;

/// On the replica: the tables that entered replication per origin, each with the gate of
/// its copy (NULL: entered without a copy, every later change applies).
pub const ENTERED_TABLE: &str = "CREATE TABLE IF NOT EXISTS capgate.entered (
        origin VARCHAR(128) NOT NULL,
        tbl VARCHAR(400) NOT NULL,
        gate_high BIGINT UNSIGNED NULL,
        gate_holes LONGTEXT NULL,
        copied_rows BIGINT UNSIGNED NULL,
        at DATETIME(6) NOT NULL,
        PRIMARY KEY (origin, tbl)
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";

/// What a failed copy step was doing, and the server's error.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{what}: {source}")]
    Server { what: &'static str, source: mysql_async::Error },
    #[error("the gate of a copied table cannot be read: {0}")]
    Gate(#[from] super::position::PositionError),
}

fn server(what: &'static str) -> impl FnOnce(mysql_async::Error) -> CopyError {
    move |source| CopyError::Server { what, source }
}

/// The tables of one origin the replica has taken in: table → its copy's gate (None: no
/// gate). `existed` is false when the record table was created by this call (a replica
/// shipped to by a capgate from before copies: its tables are already in replication).
pub struct Entered {
    pub tables: BTreeMap<String, Option<Position>>,
    pub existed: bool,
}

/// Reads (creating it if needed) the replica's record of the tables that entered.
pub async fn entered(replica: &mut mysql_async::Conn, origin: &str) -> Result<Entered, CopyError> {
    let existed: Option<u64> = replica
        .query_first("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'capgate' AND TABLE_NAME = 'entered'")
        .await
        .map_err(server("looking for capgate.entered on the replica"))?;
    replica.query_drop(ENTERED_TABLE).await.map_err(server("creating capgate.entered on the replica"))?;
    let rows: Vec<(String, Option<u64>, Option<String>)> = replica
        .exec("SELECT tbl, gate_high, gate_holes FROM capgate.entered WHERE origin = ?", (origin,))
        .await
        .map_err(server("reading the replica's tables"))?;
    let mut tables = BTreeMap::new();
    for (tbl, high, holes) in rows {
        let gate = match (high, holes) {
            (Some(h), Some(holes)) => Some(Position::parse(h, &holes)?),
            _ => None,
        };
        tables.insert(tbl, gate);
    }
    Ok(Entered { tables, existed: existed.unwrap_or(0) > 0 })
}

/// The statement that records `tbl` as entered for `origin` with `gate` (replacing an older
/// record: a copy made again has a new gate).
pub fn enter_sql(origin: &str, tbl: &str, gate: Option<&Position>, rows: Option<u64>) -> String {
    let (high, holes) = match gate {
        Some(g) => (g.high.to_string(), quote_literal(&g.holes_json())),
        None => ("NULL".to_owned(), "NULL".to_owned()),
    };
    format!(
        "INSERT INTO capgate.entered (origin, tbl, gate_high, gate_holes, copied_rows, at) VALUES ({}, {}, {high}, {holes}, {}, \
         UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE gate_high = VALUES(gate_high), gate_holes = VALUES(gate_holes), \
         copied_rows = VALUES(copied_rows), at = VALUES(at);",
        quote_literal(origin),
        quote_literal(tbl),
        rows.map_or("NULL".to_owned(), |r| r.to_string())
    )
}

/// The statement that forgets `tbl` (it left the policy: entering again copies it).
pub fn forget_sql(origin: &str, tbl: &str) -> String {
    format!("DELETE FROM capgate.entered WHERE origin = {} AND tbl = {};", quote_literal(origin), quote_literal(tbl))
}

/// How the primary captures one table, from its capture triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captured {
    /// What the insert trigger records as: async (and bounded) tables are copied, sync ones
    /// taken in without a copy.
    pub mode: CaptureMode,
    /// All three triggers (insert, update, delete) are in place. A reconciliation round
    /// creates them one by one: until the last one exists some writes are not captured, so
    /// a copy taken then could miss them.
    pub complete: bool,
}

/// The tables the primary captures (a `capgate_*` trigger on them), and how.
pub async fn captured(primary: &mut mysql_async::Conn) -> Result<BTreeMap<String, Captured>, CopyError> {
    let rows: Vec<(String, String, String, String)> = primary
        .query(
            "SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_STATEMENT FROM information_schema.TRIGGERS \
             WHERE TRIGGER_NAME LIKE 'capgate\\_%'",
        )
        .await
        .map_err(server("listing the primary's capture triggers"))?;
    let mut events: BTreeMap<String, (Vec<String>, CaptureMode)> = BTreeMap::new();
    for (schema, table, event, body) in rows {
        let mode = capture::mode_of_body(&body);
        let e = events.entry(TableName::new(schema, table).to_string()).or_insert((Vec::new(), mode));
        if event == "INSERT" {
            e.1 = mode;
        }
        e.0.push(event);
    }
    Ok(events
        .into_iter()
        .map(|(t, (ev, mode))| {
            let complete = ["INSERT", "UPDATE", "DELETE"].iter().all(|want| ev.iter().any(|e| e == want));
            (t, Captured { mode, complete })
        })
        .collect())
}

/// Whether the replica's own capgate captures `table` there (its site writes it).
pub async fn captured_on_replica(replica: &mut mysql_async::Conn, table: &TableName) -> Result<bool, CopyError> {
    let n: Option<u64> = replica
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ? \
             AND TRIGGER_NAME LIKE 'capgate\\_%'",
            (&table.schema, &table.name),
        )
        .await
        .map_err(server("looking for capture triggers on the replica"))?;
    Ok(n.unwrap_or(0) > 0)
}

/// Opens the copy's snapshot on the primary: a REPEATABLE READ transaction whose read view
/// is taken now.
pub async fn begin_snapshot(primary: &mut mysql_async::Conn) -> Result<(), CopyError> {
    primary
        .query_drop("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .await
        .map_err(server("opening the copy's snapshot on the primary"))
}

/// In the copy's snapshot: what the copy holds of the changes `pos` has not applied. Every
/// such change visible in the snapshot is applied by the gate; every number not visible
/// (a transaction still open, rolled back, or not yet begun) is a hole of it or above its
/// `high`, so it applies when it shows up. Streams the numbers: only the holes are kept.
pub async fn gate(primary: &mut mysql_async::Conn, pos: &Position) -> Result<Position, CopyError> {
    let sql = format!("SELECT seq FROM capgate.changes WHERE {} ORDER BY seq", pos.pending_sql());
    let mut result = primary.query_iter(sql).await.map_err(server("reading the changes the copy sees"))?;
    let mut builder = GateBuilder::new(pos);
    while let Some(row) = result.next().await.map_err(server("reading the changes the copy sees"))? {
        let seq: u64 = mysql_async::from_row(row);
        builder.push(seq);
    }
    Ok(builder.finish())
}

/// Builds a gate from the visible numbers in ascending order, without holding them all.
pub struct GateBuilder {
    gate: Position,
    last: u64,
}

impl GateBuilder {
    pub fn new(pos: &Position) -> GateBuilder {
        GateBuilder { gate: pos.clone(), last: pos.high }
    }

    pub fn push(&mut self, seq: u64) {
        if seq <= self.last {
            // A hole of the position, now visible.
            self.gate.holes.remove(&seq);
            return;
        }
        for missing in (self.last + 1)..seq {
            self.gate.holes.insert(missing, 0.0);
        }
        self.last = seq;
    }

    pub fn finish(mut self) -> Position {
        self.gate.high = self.last;
        self.gate
    }
}

/// The query that reads `table`'s rows as row images (the capture triggers' encoding, so
/// the replica decodes them as it decodes shipped changes).
pub fn rows_sql(table: &TableName, columns: &[super::image::Column]) -> Result<String, super::image::ImageError> {
    let image = super::image::json_object("t", columns)?;
    Ok(format!("SELECT {image} FROM {}.{} AS t", quote_ident(&table.schema), quote_ident(&table.name)))
}

/// The primary's columns of `tbl` (None: it does not exist there).
pub async fn primary_columns(primary: &mut mysql_async::Conn, table: &TableName) -> Result<Option<Vec<super::image::Column>>, CopyError> {
    let mut all =
        capture::tables(primary).await.map_err(|(capture::CaptureError::Catalog(e) | capture::CaptureError::Busy { source: e, .. })| {
            CopyError::Server { what: "reading the primary's columns", source: e }
        })?;
    Ok(all.remove(table))
}

/// Whether `gate` can no longer filter anything once the replica's position is `now`: every
/// change the gate holds has been passed by the position (any number still to come is one
/// the gate does not hold).
pub fn gate_passed(gate: &Position, now: &Position) -> bool {
    now.high >= gate.high && now.holes.keys().all(|h| !gate.applied(*h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_what_the_snapshot_saw_and_not_what_was_open() {
        // The replica applied up to 10 except 7; the snapshot sees 7, 11, 12, 15 (13 and 14
        // belong to transactions open at the snapshot, or rolled back).
        let pos = Position::default().after(&[1, 2, 3, 4, 5, 6, 8, 9, 10], 1.0);
        let mut b = GateBuilder::new(&pos);
        for s in [7, 11, 12, 15] {
            b.push(s);
        }
        let gate = b.finish();
        assert!(gate.applied(7) && gate.applied(11) && gate.applied(15), "seen by the copy: filtered");
        assert!(!gate.applied(13) && !gate.applied(14), "open at the snapshot: they apply when they commit");
        assert!(!gate.applied(16), "begun after the snapshot");
        assert!(!gate_passed(&gate, &pos));
        let later = pos.after(&[7, 11, 12, 15], 2.0);
        assert!(gate_passed(&gate, &later), "13 and 14 are holes the gate lets through");
        assert!(!gate_passed(&gate, &pos.after(&[11], 2.0)), "7, 12 and 15 still to come");
    }

    #[test]
    fn a_gate_over_nothing_new_is_the_position() {
        let pos = Position::default().after(&[1, 3], 1.0);
        let gate = GateBuilder::new(&pos).finish();
        assert_eq!((gate.high, gate.holes.keys().copied().collect::<Vec<_>>()), (3, vec![2]));
        assert!(gate_passed(&gate, &pos));
    }

    #[test]
    fn entering_records_the_gate_or_none() {
        let gate = Position::default().after(&[2], 0.0);
        let sql = enter_sql("west", "s.t", Some(&gate), Some(5));
        assert!(sql.contains("'s.t', 2, '[[1,0.0]]', 5"), "{sql}");
        assert!(enter_sql("west", "s.t", None, None).contains("NULL, NULL, NULL"));
    }
}

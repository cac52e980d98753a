//! The SQL of async shipping to a MySQL / MariaDB replica (decision 0021): reading a batch of
//! committed changes on the primary, applying it on the replica in one transaction that also
//! moves the replica's [`Position`], and the figures lag and pruning need.
//!
//! - Primary: `capgate.shipped(replica, high, holes)` mirrors each replica's position after
//!   it commits there (lag, pruning; never the truth: the replica's copy is);
//! - Replica: `capgate.applied(origin, high, holes)`, updated in the batch's own transaction
//!   and fenced on its previous value (a stale shipper's batch fails with `CGW01`).

use mysql_async::prelude::Queryable;

use super::apply::{self, Change, Tables};
use super::image::quote_literal;
use super::order::Free;
use super::position::Position;

/// The primary's mirror of every replica's position.
pub const SHIPPED_TABLE: &str = "CREATE TABLE IF NOT EXISTS capgate.shipped (
        replica VARCHAR(128) NOT NULL PRIMARY KEY,
        high BIGINT UNSIGNED NOT NULL,
        holes LONGTEXT NOT NULL,
        at DATETIME(6) NOT NULL
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";

/// The replica's position per origin.
pub const APPLIED_TABLE: &str = "CREATE TABLE IF NOT EXISTS capgate.applied (
        origin VARCHAR(128) NOT NULL PRIMARY KEY,
        high BIGINT UNSIGNED NOT NULL,
        holes LONGTEXT NOT NULL
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";

/// What a failed ship step was doing, and the server's error.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{what}: {source}")]
    Server { what: &'static str, source: mysql_async::Error },
    #[error("the replica's position for this origin cannot be read: {0}")]
    Position(#[from] super::position::PositionError),
}

fn server(what: &'static str) -> impl FnOnce(mysql_async::Error) -> ShipError {
    move |source| ShipError::Server { what, source }
}

/// One change read for shipping, with its capture time (Unix seconds).
#[derive(Debug, Clone)]
pub struct Shipped {
    pub change: Change,
    pub at: f64,
}

/// A batch read on the primary: its changes in `seq` order and the primary's clock right
/// after the read (when its holes are first seen).
#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<Shipped>,
    pub seen: f64,
}

impl Batch {
    /// Keeps the first changes whose images add up to about `bytes` (at least one). The
    /// changes left out are read again by the next batch: the position never passes them.
    pub fn truncate_to(&mut self, bytes: usize) {
        let mut total = 0;
        let keep = self
            .changes
            .iter()
            .take_while(|s| {
                total += s.change.old.as_ref().map_or(0, String::len) + s.change.new.as_ref().map_or(0, String::len);
                total <= bytes
            })
            .count();
        self.changes.truncate(keep.max(1));
    }

    /// Keeps the changes before the first carried DDL statement (change `S`), or that one
    /// alone when it comes first: a replica applies it between two batches (decision 0040).
    /// The changes left out are read again by the next batch.
    pub fn cut_at_ddl(&mut self) {
        match self.changes.iter().position(|s| s.change.op == super::ddl::OP) {
            Some(0) => self.changes.truncate(1),
            Some(i) => self.changes.truncate(i),
            None => {}
        }
    }
}

/// The primary's clock as Unix seconds, in the session's time zone rules (the shipper's
/// primary session keeps `time_zone = SYSTEM`, the zone `trx_started` is shown in).
const NOW: &str = "UNIX_TIMESTAMP(NOW(6))";

/// A UTC `DATETIME` as Unix seconds whatever the session's time zone.
fn utc_epoch(column: &str) -> String {
    format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column}) / 1000000")
}

/// Prepares capgate's primary session for shipping: its time zone, so `NOW()` and
/// `trx_started` are read alike.
pub async fn prepare_primary(conn: &mut mysql_async::Conn) -> Result<(), ShipError> {
    conn.query_drop("SET time_zone = 'SYSTEM'").await.map_err(server("setting the shipper's time zone"))?;
    conn.query_drop(SHIPPED_TABLE).await.map_err(server("creating capgate.shipped on the primary"))
}

/// A change as [`select_sql`] reads it.
type ChangeRow = (u64, String, String, Option<String>, Option<String>, f64);

fn shipped_of(rows: Vec<ChangeRow>) -> Vec<Shipped> {
    rows.into_iter().map(|(seq, tbl, op, old, new, at)| Shipped { change: Change { seq, tbl, op, old, new }, at }).collect()
}

/// Up to `rows` changes after `from`, by one consistent read (committed changes only), and the
/// primary's clock right after it. With `note` (a replica and its position), that position is
/// first recorded as [`note_shipped`] does. One round trip whatever is asked: the shipper reads
/// the next batch while the replica applies the current one, and records the position the
/// previous batch reached with that read instead of in a round trip of its own.
pub async fn read_batch(
    conn: &mut mysql_async::Conn,
    note: Option<(&str, &Position)>,
    from: &Position,
    rows: usize,
) -> Result<Batch, ShipError> {
    let read = select_sql(&format!("{} ORDER BY seq LIMIT {rows}", from.pending_sql()));
    let sql = match note {
        Some((replica, pos)) => format!("{};{read};SELECT {NOW}", note_sql(replica, pos)),
        None => format!("{read};SELECT {NOW}"),
    };
    let what = if note.is_some() { "recording the shipped position and reading changes" } else { "reading changes" };
    let mut result = conn.query_iter(sql).await.map_err(server(what))?;
    if note.is_some() {
        result.collect::<mysql_async::Row>().await.map_err(server(what))?;
    }
    let changes: Vec<ChangeRow> = result.collect().await.map_err(server(what))?;
    let seen: Vec<f64> = result.collect().await.map_err(server("reading the primary's clock"))?;
    result.drop_result().await.map_err(server(what))?;
    Ok(Batch { changes: shipped_of(changes), seen: seen.first().copied().unwrap_or(0.0) })
}

/// The SELECT of the changes `condition` (a WHERE clause, possibly with ORDER BY and LIMIT;
/// `seq` order when it has none) selects, as [`ChangeRow`]s.
fn select_sql(condition: &str) -> String {
    let order = if condition.contains("ORDER BY") { "" } else { " ORDER BY seq" };
    format!("SELECT seq, tbl, op, old_image, new_image, {} FROM capgate.changes WHERE {condition}{order}", utc_epoch("at"))
}

/// The changes `condition` (as [`select_sql`] takes it) selects.
pub async fn read_where(conn: &mut mysql_async::Conn, condition: &str) -> Result<Vec<Shipped>, ShipError> {
    let got: Vec<ChangeRow> = conn.query(select_sql(condition)).await.map_err(server("reading changes"))?;
    Ok(shipped_of(got))
}

/// Which of `pos`'s holes will never be filled (decision 0021), to drop from the position.
/// Two reads, in this order: the primary's clock and the start of its oldest open transaction
/// other than this session's ([`Position::settle_candidates`]); then, for the candidates, a
/// look for their rows. A candidate's transaction is not open at the listing, so it ended
/// before it: if it committed, the look (a fresh read after the listing) finds the row, and
/// the hole stays to be read by the next batch. Without the look, a transaction that
/// committed between the last batch read and the listing had its row dropped unshipped.
/// Needs the PROCESS privilege.
pub async fn settled_holes(conn: &mut mysql_async::Conn, pos: &Position) -> Result<Vec<u64>, ShipError> {
    let sql = format!(
        "SELECT {NOW}, (SELECT UNIX_TIMESTAMP(MIN(trx_started)) FROM information_schema.INNODB_TRX \
         WHERE trx_mysql_thread_id <> CONNECTION_ID()), \
         (SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = 0)"
    );
    let row: Option<(f64, Option<f64>, u64)> = conn.query_first(sql).await.map_err(server("listing the primary's open transactions"))?;
    let (now, oldest, detached) = row.unwrap_or((0.0, Some(0.0), 0));
    // A transaction of no session — an XA branch prepared and left by its client, or one the
    // server recovered at start — may carry a `trx_started` later than the number it holds:
    // InnoDB stamps a recovered transaction with the restart's time. No hole is dropped
    // while one exists (its XA COMMIT may still bring the row).
    if detached > 0 {
        return Ok(Vec::new());
    }
    let mut candidates = pos.settle_candidates(now, oldest);
    for chunk in candidates.clone().chunks(10_000) {
        let list: Vec<String> = chunk.iter().map(u64::to_string).collect();
        let found: Vec<u64> = conn
            .query(format!("SELECT seq FROM capgate.changes WHERE seq IN ({})", list.join(",")))
            .await
            .map_err(server("looking for the rows of settled holes"))?;
        let found: std::collections::HashSet<u64> = found.into_iter().collect();
        candidates.retain(|s| !found.contains(s));
    }
    Ok(candidates)
}

/// Where a replica new to this origin starts: just below the smallest seq in
/// `capgate.changes`, committed or not (a read-uncommitted look), so it is sent every change
/// the table holds and the numbers pruned long ago are not holes. None: the table is empty.
pub async fn fresh_start(conn: &mut mysql_async::Conn) -> Result<Option<Position>, ShipError> {
    conn.query_drop("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED").await.map_err(server("reading the oldest change"))?;
    let min: Option<Option<u64>> =
        conn.query_first("SELECT MIN(seq) FROM capgate.changes").await.map_err(server("reading the oldest change"))?;
    Ok(min.flatten().map(|m| Position { high: m.saturating_sub(1), holes: Default::default() }))
}

/// Records `pos` as `replica`'s position on the primary (lag and pruning read it).
pub async fn note_shipped(conn: &mut mysql_async::Conn, replica: &str, pos: &Position) -> Result<(), ShipError> {
    conn.query_drop(note_sql(replica, pos)).await.map_err(server("recording the shipped position on the primary"))
}

/// The statement of [`note_shipped`].
fn note_sql(replica: &str, pos: &Position) -> String {
    format!(
        "INSERT INTO capgate.shipped (replica, high, holes, at) VALUES ({}, {}, {}, UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE high = VALUES(high), holes = VALUES(holes), at = VALUES(at)",
        quote_literal(replica),
        pos.high,
        quote_literal(&pos.holes_json())
    )
}

/// Every replica's position as the primary last recorded it.
pub async fn shipped(conn: &mut mysql_async::Conn) -> Result<Vec<(String, Position)>, ShipError> {
    let rows: Vec<(String, u64, String)> =
        conn.query("SELECT replica, high, holes FROM capgate.shipped").await.map_err(server("reading capgate.shipped"))?;
    let mut out = Vec::new();
    for (replica, high, holes) in rows {
        out.push((replica, Position::parse(high, &holes)?));
    }
    Ok(out)
}

/// Per table: changes not applied at `pos` and the capture time of the oldest (Unix seconds).
pub async fn pending(conn: &mut mysql_async::Conn, pos: &Position) -> Result<Vec<(String, u64, f64)>, ShipError> {
    let sql = format!("SELECT tbl, COUNT(*), MIN({}) FROM capgate.changes WHERE {} GROUP BY tbl", utc_epoch("at"), pos.pending_sql());
    conn.query(sql).await.map_err(server("measuring lag"))
}

/// The most change numbers one [`prune`] looks at: one short statement, so the shipper's loop
/// (and the writers the delete's locks would queue) wait for a chunk at a time.
pub const PRUNE_CHUNK: u64 = 10_000;

/// Deletes the changes every replica in `replicas` has applied and that are older than
/// `retention_secs` among the [`PRUNE_CHUNK`] numbers from the oldest kept, keeping those held
/// for a halted table ([`super::held`]). Returns how many were deleted and whether more may be
/// due (the chunk was whole and something in it went).
///
/// Why a window of numbers rather than `ORDER BY seq LIMIT`: every change kept for the
/// retention (an hour of them by default) is below the replica's floor and fails only the age
/// test, so a `LIMIT` that was not reached walked the whole table on every prune — millions of
/// rows a minute under load. `at` grows with `seq` (both are taken by the same insert), so
/// the oldest change kept bounds where due changes can be.
pub async fn prune(conn: &mut mysql_async::Conn, replicas: &[String], retention_secs: u64) -> Result<(u64, bool), ShipError> {
    let all = shipped(conn).await?;
    let mut floor: Option<u64> = None;
    for r in replicas {
        let Some((_, pos)) = all.iter().find(|(name, _)| name == r) else { return Ok((0, false)) };
        floor = Some(floor.map_or(pos.floor(), |f| f.min(pos.floor())));
    }
    let Some(floor) = floor else { return Ok((0, false)) };
    let floor = super::held::floor(conn).await?.map_or(floor, |held| held.min(floor));
    let oldest: Option<Option<u64>> =
        conn.query_first("SELECT MIN(seq) FROM capgate.changes").await.map_err(server("reading the oldest change"))?;
    let Some(oldest) = oldest.flatten() else { return Ok((0, false)) };
    let end = floor.min(oldest.saturating_add(PRUNE_CHUNK));
    if end <= oldest {
        return Ok((0, false));
    }
    let sql = format!(
        "DELETE FROM capgate.changes WHERE seq >= {oldest} AND seq < {end} AND at < UTC_TIMESTAMP(6) - INTERVAL {retention_secs} SECOND"
    );
    conn.query_drop(sql).await.map_err(server("pruning applied changes"))?;
    let deleted = conn.affected_rows();
    Ok((deleted, deleted > 0 && end == oldest + PRUNE_CHUNK))
}

/// Creates the replica's `capgate.applied` and reads the position of `origin` (a replica new
/// to it starts at nothing applied).
pub async fn replica_position(conn: &mut mysql_async::Conn, origin: &str) -> Result<Position, ShipError> {
    conn.query_drop(APPLIED_TABLE).await.map_err(server("creating capgate.applied on the replica"))?;
    let o = quote_literal(origin);
    conn.query_drop(format!("INSERT IGNORE INTO capgate.applied (origin, high, holes) VALUES ({o}, 0, '[]')"))
        .await
        .map_err(server("recording the origin on the replica"))?;
    let row: Option<(u64, String)> = conn
        .query_first(format!("SELECT high, holes FROM capgate.applied WHERE origin = {o}"))
        .await
        .map_err(server("reading the replica's position"))?;
    let (high, holes) = row.unwrap_or((0, "[]".into()));
    Ok(Position::parse(high, &holes)?)
}

/// The statement that moves the replica's position from `from` to `to`, then checks that it
/// moved exactly one row: another shipper that moved it first makes the batch fail.
pub fn advance_sql(origin: &str, from: &Position, to: &Position) -> String {
    format!(
        "UPDATE capgate.applied SET high = {}, holes = {} WHERE origin = {} AND high = {} AND holes = {};\
         SET @capgate_rows = capgate.expect_rows(ROW_COUNT(), 1, {});",
        to.high,
        quote_literal(&to.holes_json()),
        quote_literal(origin),
        from.high,
        quote_literal(&from.holes_json()),
        quote_literal(&format!("stale_shipper {origin}: another capgate process applied to this replica first"))
    )
}

/// Applies `statements` and moves the position, as one replica transaction in one round trip.
/// On an error the transaction is rolled back and the error returned.
pub async fn commit_batch(conn: &mut mysql_async::Conn, statements: &str, advance: &str) -> Result<(), mysql_async::Error> {
    let sql = format!("START TRANSACTION;{statements}{advance}COMMIT");
    match conn.query_drop(sql).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            Err(e)
        }
    }
}

/// How [`apply_counted`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Every statement matched its rows; committed.
    Committed,
    /// A statement matched another number of rows than its changes (a row missing or
    /// different on the replica): rolled back.
    CountDiffers,
}

/// Applies `text` and moves the position (`advance`) in one replica transaction: one round
/// trip for the statements, in which each statement's OK reply carries the rows it matched
/// (CLIENT_FOUND_ROWS: an UPDATE's matched rows), compared with [`super::batched::Text::counts`]
/// here; a second for the COMMIT, or the ROLLBACK when a count differs. On a server error the
/// transaction is rolled back and the error returned.
pub async fn apply_counted(
    conn: &mut mysql_async::Conn,
    text: &super::batched::Text,
    advance: &str,
) -> Result<Counted, mysql_async::Error> {
    let sql = format!("START TRANSACTION;{}{advance}", text.sql);
    let counts = match counts_of(conn, sql).await {
        Ok(counts) => counts,
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            return Err(e);
        }
    };
    // The first reply is START TRANSACTION's, the last ones the advance's (checked there).
    let differs = text.counts.iter().enumerate().any(|(i, want)| want.is_some_and(|w| counts.get(i + 1) != Some(&w)));
    if differs {
        conn.query_drop("ROLLBACK").await?;
        return Ok(Counted::CountDiffers);
    }
    match conn.query_drop("COMMIT").await {
        Ok(()) => Ok(Counted::Committed),
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Runs a multi-statement text and returns the row count of each statement's reply, in order.
async fn counts_of(conn: &mut mysql_async::Conn, sql: String) -> Result<Vec<u64>, mysql_async::Error> {
    let mut result = conn.query_iter(sql).await?;
    let mut counts = vec![result.affected_rows()];
    // Each collect ends the current reply and reads the next one's OK packet.
    while !result.is_empty() {
        result.collect::<mysql_async::Row>().await?;
        counts.push(result.affected_rows());
    }
    result.drop_result().await?;
    Ok(counts)
}

/// The replica's columns (for turning images into statements).
pub async fn replica_tables(conn: &mut mysql_async::Conn) -> Result<Tables, ShipError> {
    super::capture::tables(conn).await.map_err(
        |(super::capture::CaptureError::Catalog(e) | super::capture::CaptureError::Busy { source: e, .. })| ShipError::Server {
            what: "reading the replica's tables",
            source: e,
        },
    )
}

/// The statements of `changes`, or the first change that cannot be turned into statements.
pub fn statements(changes: &[Shipped], tables: &Tables) -> Result<String, apply::ApplyError> {
    let plain: Vec<Change> = changes.iter().map(|s| s.change.clone()).collect();
    apply::statements(&plain, tables)
}

/// The merged statements of `changes` for the fast path, regrouped by key on the `free`
/// tables ([`super::order`], [`super::batched`]): a conflict in them only says that the batch
/// must be applied change by change, in capture order, with [`statements`].
pub fn batched_statements(changes: &[Shipped], tables: &Tables, free: &Free) -> Result<super::batched::Text, apply::ApplyError> {
    let plain: Vec<Change> = changes.iter().map(|s| s.change.clone()).collect();
    super::batched::statements(&super::order::regroup(&plain, tables, free), tables)
}

/// The replica's tables and which of them are free to regroup ([`super::order`]), read
/// together.
pub async fn replica_catalog(conn: &mut mysql_async::Conn) -> Result<(Tables, Free), ShipError> {
    let tables = replica_tables(conn).await?;
    let free = super::order::free(conn, &tables).await.map_err(server("reading the replica's keys and triggers"))?;
    Ok((tables, free))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_to_its_byte_budget_keeping_at_least_one_change() {
        let change = |seq: u64, n: usize| Shipped {
            change: Change { seq, tbl: "s.t".into(), op: "I".into(), old: None, new: Some("x".repeat(n)) },
            at: 0.0,
        };
        let mut batch = Batch { changes: vec![change(1, 40), change(2, 40), change(3, 40)], seen: 0.0 };
        batch.truncate_to(100);
        assert_eq!(batch.changes.iter().map(|s| s.change.seq).collect::<Vec<_>>(), [1, 2]);
        batch.truncate_to(10);
        assert_eq!(batch.changes.len(), 1);
        // The position then moves to the last change kept: the rest are read again.
        assert_eq!(Position::default().after(&[1], 0.0).high, 1);
    }
}

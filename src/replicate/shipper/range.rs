//! Reading one snapshot range from the primary (decision 0009): every change whose
//! transaction is visible in `B` — the snapshot of a REPEATABLE READ transaction opened now —
//! and not in `A`, the snapshot the replica last applied. Changes come in `seq` order through
//! a portal (a cursor), a page at a time, so a transaction of any size is read with bounded
//! memory.
//!
//! Why this gives every dependency its order: a transaction that changed a row another one
//! changed waited for the other's row lock, so it committed after it; it is then never
//! visible in a snapshot where the other is not, so it never lands in an earlier range, and
//! inside a range `seq` (taken at capture, after the lock) orders the two.

use std::collections::{BTreeMap, VecDeque};

use tokio_postgres::{Client, IsolationLevel, Portal, Transaction};

/// Rows fetched from the portal at a time (a page is made of such chunks).
const CHUNK_ROWS: i32 = 500;

/// The range's changes, each as the JSON object `capgate.apply_changes` takes, built on the
/// primary (the row images are never parsed here: their text goes through untouched). A sync
/// commit's change under a quorum carries its `gid` (decision 0017).
const RANGE_FROM_SQL: &str =
    "SELECT tbl, CASE WHEN gid IS NULL THEN json_build_object('seq', seq, 'at', at, 'tbl', tbl, 'op', op, 'old', old, 'new', new) \
     ELSE json_build_object('seq', seq, 'at', at, 'tbl', tbl, 'op', op, 'old', old, 'new', new, 'gid', gid) END::text \
     FROM capgate.changes \
     WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot) \
     AND tbl <> ALL ($2::text[]) \
     AND NOT coalesce(pg_visible_in_snapshot(xid, ($3::text::json ->> tbl)::pg_snapshot), false) \
     ORDER BY seq";

/// The same from the beginning (the replica has applied nothing of this origin yet).
const RANGE_ALL_SQL: &str =
    "SELECT tbl, CASE WHEN gid IS NULL THEN json_build_object('seq', seq, 'at', at, 'tbl', tbl, 'op', op, 'old', old, 'new', new) \
     ELSE json_build_object('seq', seq, 'at', at, 'tbl', tbl, 'op', op, 'old', old, 'new', new, 'gid', gid) END::text \
     FROM capgate.changes \
     WHERE $1::text IS NULL AND tbl <> ALL ($2::text[]) \
     AND NOT coalesce(pg_visible_in_snapshot(xid, ($3::text::json ->> tbl)::pg_snapshot), false) \
     ORDER BY seq";

/// Run in a snapshot's transaction before it commits, so that its COMMIT flushes the primary's
/// WAL past every transaction the snapshot sees: a transactional message makes the commit one
/// that wrote WAL (a transaction that only took an xid commits without a flush), and
/// `synchronous_commit = on` makes that commit wait for the flush. Every commit visible in the
/// snapshot was written to the WAL before the snapshot was taken, so before this record.
/// Replicas commit what a snapshot showed only after this: a change the primary could still
/// lose in a crash (its client committed with `synchronous_commit = off`) is never shipped.
pub(super) const DURABLE_SQL: &str =
    "SET LOCAL synchronous_commit = on; SELECT pg_catalog.pg_logical_emit_message(true, 'capgate', 'durable')";

/// Some consecutive changes of a range: one replica round trip.
#[derive(Debug, Default)]
pub struct Page {
    /// A JSON array, as `capgate.apply_changes` takes it.
    pub json: String,
    pub changes: usize,
    /// Changes by table.
    pub by_table: BTreeMap<String, u64>,
}

impl Page {
    fn push(&mut self, table: String, change: &str) {
        self.json.push(if self.changes == 0 { '[' } else { ',' });
        self.json.push_str(change);
        self.changes += 1;
        *self.by_table.entry(table).or_insert(0) += 1;
    }

    fn finish(mut self) -> Option<Page> {
        if self.changes == 0 {
            return None;
        }
        self.json.push(']');
        Some(self)
    }
}

/// An open range: the primary transaction holding its snapshot and the portal over its
/// changes. Dropping it ends the transaction.
pub struct Range<'a> {
    tx: Transaction<'a>,
    portal: Portal,
    /// `B`, as text: what the replica's applied snapshot becomes once the range commits.
    pub snapshot: String,
    /// Changes fetched but not yet put in a page: (table, change). At most one chunk.
    pending: VecDeque<(String, String)>,
    exhausted: bool,
}

impl<'a> Range<'a> {
    /// Opens the range after `from` (None: from the beginning), leaving out the changes of
    /// `skip` and those of a gated table visible in its copy snapshot (`gates`, see
    /// [`super::tables::filters`]).
    pub async fn open(
        primary: &'a mut Client,
        from: Option<&str>,
        skip: &[String],
        gates: &str,
    ) -> Result<Range<'a>, tokio_postgres::Error> {
        let tx = primary.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let snapshot: String = tx.query_one("SELECT pg_current_snapshot()::text", &[]).await?.try_get(0)?;
        let sql = if from.is_some() { RANGE_FROM_SQL } else { RANGE_ALL_SQL };
        let portal = tx.bind(sql, &[&from, &skip, &gates]).await?;
        Ok(Range { tx, portal, snapshot, pending: VecDeque::new(), exhausted: false })
    }

    /// The next page: at most `rows` changes and about `bytes` bytes of them (always at least
    /// one change); None at the end of the range.
    pub async fn next_page(&mut self, rows: usize, bytes: usize) -> Result<Option<Page>, tokio_postgres::Error> {
        let mut page = Page::default();
        while page.changes < rows {
            if self.pending.is_empty() {
                if self.exhausted {
                    break;
                }
                let fetched = self.tx.query_portal(&self.portal, CHUNK_ROWS).await?;
                self.exhausted = fetched.len() < CHUNK_ROWS as usize;
                for row in fetched {
                    self.pending.push_back((row.try_get(0)?, row.try_get(1)?));
                }
                continue;
            }
            let fits = self.pending.front().is_some_and(|(_, c)| page.changes == 0 || page.json.len() + c.len() <= bytes);
            if !fits {
                break;
            }
            if let Some((table, change)) = self.pending.pop_front() {
                page.push(table, &change);
            }
        }
        Ok(page.finish())
    }

    /// Ends the primary transaction (it only read).
    pub async fn close(self) -> Result<(), tokio_postgres::Error> {
        self.tx.commit().await
    }

    /// Ends the primary transaction once everything the range's snapshot sees is durable on
    /// the primary ([`DURABLE_SQL`]): call it before a replica commits the range.
    pub async fn close_durable(self) -> Result<(), tokio_postgres::Error> {
        self.tx.batch_execute(DURABLE_SQL).await?;
        self.tx.commit().await
    }
}

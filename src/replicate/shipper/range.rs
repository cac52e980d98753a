//! Reading one snapshot range from the primary (decisions 0009 and 0022): every change whose
//! transaction is visible in `B` — a primary snapshot taken when the range began — and not in
//! `A`, the snapshot the replica last applied completely. Changes come in `seq` order through
//! a portal (a cursor), a page at a time, so a transaction of any size is read with bounded
//! memory; a long range is cut into parts the replica commits one by one, each cut where no
//! primary transaction spans it.
//!
//! Why this gives every dependency its order: a transaction that changed a row another one
//! changed waited for the other's row lock, so it committed after it; it is then never
//! visible in a snapshot where the other is not, so it never lands in an earlier range, and
//! inside a range `seq` (taken at capture, after the lock) orders the two; parts follow each
//! other in `seq` order.

use std::collections::{BTreeMap, VecDeque};

use tokio_postgres::{Client, IsolationLevel, Portal, Transaction};

use super::tables::Filters;

/// Rows fetched from the portal at a time (a page is made of such chunks).
const CHUNK_ROWS: i32 = 500;

/// The range transaction's sort memory (see [`Range::open`]).
const RANGE_WORK_MEM: &str = "SET LOCAL work_mem = '64MB'";

/// Where the replica stands for one origin (`capgate.applied`, decision 0022): every change
/// visible in `snapshot` (A) is applied, and when a range from A to `target` (B) is being
/// committed in parts, so is every change of it up to `seq`. All three move only in replica
/// transactions that applied changes, so a fault leaves them where the last commit put them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// A; None: nothing of this origin applied completely yet.
    pub snapshot: Option<String>,
    /// B of the range committed in parts, while its last part is not committed.
    pub target: Option<String>,
    /// The last change of that range applied (its `seq`).
    pub seq: Option<i64>,
}

/// The range's changes after `A` (`$1`, NULL: from the beginning) up to `B` (`$2`), after
/// `seq` `$3` (NULL: from its start), of the tables `$4`, less those a copy snapshot `$5`
/// gates, each as the JSON object `capgate.apply_changes` takes, built on the primary (the row
/// images are never parsed here: their text goes through untouched; a sync commit's change
/// under a quorum carries its `gid`, decision 0017), with its `seq` and whether the range can
/// be cut after it: every transaction with a change at or before it has all its changes at or
/// before it (the running maximum of each transaction's last `seq` is the change's own).
fn range_sql(from_start: bool) -> String {
    let after_a = if from_start {
        "$1::text IS NULL"
    } else {
        "xid >= pg_snapshot_xmin($1::text::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)"
    };
    format!(
        "SELECT tbl, CASE WHEN gid IS NULL THEN json_build_object('seq', seq, 'at', at, 'tbl', tbl, 'op', op, 'old', old, 'new', new) \
         ELSE json_build_object('seq', seq, 'at', at, 'tbl', tbl, 'op', op, 'old', old, 'new', new, 'gid', gid) END::text, \
         seq, max(last) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) = seq \
         FROM (SELECT *, max(seq) OVER (PARTITION BY xid) AS last FROM capgate.changes \
         WHERE {after_a} \
         AND xid < pg_snapshot_xmax($2::text::pg_snapshot) AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot) \
         AND ($3::bigint IS NULL OR seq > $3) \
         AND tbl = ANY ($4::text[]) \
         AND NOT coalesce(pg_visible_in_snapshot(xid, ($5::text::json ->> tbl)::pg_snapshot), false)) AS c \
         ORDER BY seq"
    )
}

/// Takes `B` for a new range after `A` (`$1`) and, in the same statement: the captured tables
/// not among `$2` (see [`Range::open`]), and whether any change of the tables `$3` lies between
/// A and B, in which case it makes the primary's WAL durable past B: the transactional message
/// makes this transaction's commit one that wrote WAL, and `synchronous_commit = on` (set by
/// the caller) makes that commit wait for the flush. Every commit visible in B was written to
/// the WAL before B was taken, so before this record. This runs before the replica commits
/// any part of the range, so a change the primary could still lose in a crash (its client
/// committed with `synchronous_commit = off`) is never on a replica.
///
/// The test is bounded by B's `xmax` as well as A's `xmin`, so it is an index range scan over
/// the changes after A: with A alone, a generic plan cannot tell how many rows lie above A
/// and scans `capgate.changes` whole, every shipped change kept for the retention included
/// (5 ms a range at 56,000 rows; decision 0037).
fn snapshot_sql(from_start: bool) -> String {
    let after_a = if from_start {
        "$1::text IS NULL"
    } else {
        "xid >= pg_snapshot_xmin($1::text::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)"
    };
    format!(
        "SELECT s.snapshot, s.unlisted, CASE WHEN EXISTS (SELECT 1 FROM capgate.changes WHERE {after_a} \
         AND xid < pg_snapshot_xmax(s.snapshot::pg_snapshot) AND tbl = ANY ($3::text[])) \
         THEN pg_catalog.pg_logical_emit_message(true, 'capgate', 'durable') IS NOT NULL ELSE false END \
         FROM ({}) AS s(snapshot, unlisted)",
        super::tables::range_snapshot_sql("$2")
    )
}

/// Run in the initial copy's transaction before it commits, for the same reason as
/// [`snapshot_sql`]'s message: what the copy read is durable on the primary before the replica
/// holds it.
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
    /// The `seq` of the page's last change.
    pub last_seq: i64,
    /// The page ends a part of the range: the replica commits after it (see
    /// [`Range::next_page`]).
    pub ends_part: bool,
}

impl Page {
    fn push(&mut self, change: Change) {
        self.json.push(if self.changes == 0 { '[' } else { ',' });
        self.json.push_str(&change.json);
        self.changes += 1;
        self.last_seq = change.seq;
        *self.by_table.entry(change.table).or_insert(0) += 1;
    }

    fn finish(mut self) -> Option<Page> {
        if self.changes == 0 {
            return None;
        }
        self.json.push(']');
        Some(self)
    }
}

/// One change as read from the range's portal.
struct Change {
    table: String,
    json: String,
    seq: i64,
    /// The range can be cut after this change (no transaction spans the cut).
    cut: bool,
}

/// How [`Range::open`] ended.
pub enum Opened<'a> {
    /// A range to read.
    Range(Range<'a>),
    /// A new range would hold nothing: B is `snapshot`.
    Empty { snapshot: String },
    /// B shows captured tables the shipper has not listed: nothing was read; list them (copy
    /// or adopt them) before the next range.
    Unlisted(Vec<String>),
}

/// An open range: the primary transaction whose portal reads its changes. Dropping it ends
/// the transaction.
pub struct Range<'a> {
    tx: Transaction<'a>,
    portal: Portal,
    /// `B`, as text: what the replica's applied snapshot becomes once the range commits.
    pub snapshot: String,
    /// Changes fetched but not yet put in a page. At most one chunk.
    pending: VecDeque<Change>,
    exhausted: bool,
    /// A part ends at the first cut once it holds this many changes.
    part_changes: usize,
    /// Changes put in pages since the last part ended.
    in_part: usize,
}

impl<'a> Range<'a> {
    /// Opens the range after `at` with the changes of the tables `filters` ships only, less
    /// those of a gated table visible in its copy snapshot (see [`super::tables::filters`]).
    /// A range committed in part (`at.target`) goes on with the same B after `at.seq`;
    /// otherwise B is taken now, in a short transaction that makes the primary's WAL durable
    /// past B when the range holds anything ([`snapshot_sql`]). The changes are then read in
    /// a REPEATABLE READ transaction (a later snapshot, which sees every change B does) through
    /// explicit visibility in B.
    ///
    /// `listed`: every captured table the shipper knows; when B shows a table captured that is
    /// not among them, the range must not be read: the table's changes in it would be left
    /// out before the table was copied (async) or adopted at the snapshot its capture began in
    /// (sync). A range that goes on was checked when its B was taken, and every table captured
    /// then was copied or adopted before its first part (their state is on the replica).
    ///
    /// Parts: see [`Range::next_page`].
    pub async fn open(
        primary: &'a mut Client,
        at: &Position,
        filters: &Filters,
        listed: &[String],
        part_changes: usize,
    ) -> Result<Opened<'a>, tokio_postgres::Error> {
        let from = at.snapshot.as_deref();
        let (snapshot, after) = match &at.target {
            Some(target) => (target.clone(), at.seq),
            None => {
                // Prepared first: pipelined with a text query, its Bind would follow the COMMIT.
                let sql = primary.prepare(&snapshot_sql(from.is_none())).await?;
                let begin = primary.batch_execute("BEGIN; SET LOCAL synchronous_commit = on");
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&from, &listed, &filters.ship];
                let taken = primary.query_one(&sql, &params);
                let commit = primary.batch_execute("COMMIT");
                let (began, taken, committed) = tokio::join!(begin, taken, commit);
                let row = began.and(taken)?;
                committed?;
                let (snapshot, unlisted, pending): (String, Vec<String>, bool) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                if !unlisted.is_empty() {
                    return Ok(Opened::Unlisted(unlisted));
                }
                if !pending {
                    return Ok(Opened::Empty { snapshot });
                }
                (snapshot, None)
            }
        };
        let tx = primary.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        // The range is sorted whole before its first row (capture order, and where it can
        // be cut): in memory, not in temporary files (the default 4 MB spilled a few
        // thousand changes to disk, on a primary whose disk its own clients keep busy).
        tx.batch_execute(RANGE_WORK_MEM).await?;
        let sql = range_sql(from.is_none());
        let portal = tx.bind(&sql, &[&from, &snapshot, &after, &filters.ship, &filters.gates]).await?;
        let range = Range { tx, portal, snapshot, pending: VecDeque::new(), exhausted: false, part_changes, in_part: 0 };
        Ok(Opened::Range(range))
    }

    /// The next page: at most `rows` changes and about `bytes` bytes of them (always at least
    /// one change); None at the end of the range. A page that brings the current part to
    /// `part_changes` changes or more ends at the first change after which no primary
    /// transaction spans the cut, and says so ([`Page::ends_part`]): the replica commits the
    /// part there, so a long range is not lost whole to a fault, and a transaction's changes
    /// are never split between two replica transactions.
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
                    let change = Change { table: row.try_get(0)?, json: row.try_get(1)?, seq: row.try_get(2)?, cut: row.try_get(3)? };
                    self.pending.push_back(change);
                }
                continue;
            }
            let fits = self.pending.front().is_some_and(|c| page.changes == 0 || page.json.len() + c.json.len() <= bytes);
            if !fits {
                break;
            }
            let Some(change) = self.pending.pop_front() else { break };
            let cut = change.cut;
            page.push(change);
            self.in_part += 1;
            if cut && self.in_part >= self.part_changes {
                self.in_part = 0;
                page.ends_part = true;
                break;
            }
        }
        Ok(page.finish())
    }

    /// Ends the primary transaction (it only read).
    pub async fn close(self) -> Result<(), tokio_postgres::Error> {
        self.tx.commit().await
    }
}

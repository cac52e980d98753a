//! Tables entering replication on a MySQL replica (decision 0030): copied, then gated.
//!
//! A table the primary captures as async or bounded that the replica has not taken in is
//! copied between two batches: its rows are read on the primary in one consistent snapshot
//! and loaded into the replica's table in chunks (multi-row INSERTs) inside one replica
//! transaction that also records the table and its *gate* — which of the changes still to
//! ship the snapshot already held ([`crate::store::mysql::copy`]). Until then its changes are
//! left out of the batches (the copy will hold them); after, a change ships only if the gate
//! says the copy did not see it. A sync table is taken in without a copy (it must already be
//! equal, decision 0014). A copy that cannot be made (the table or a column missing on the
//! replica, or rows there that a copy would erase at a site that takes writes) halts that
//! table alone with the reason; `capgate resume` tries the copy again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::{End, Run};
use crate::classify::TableName;
use crate::replicate::shipper::{Phase, TableState, TableStatus};
use crate::store::mysql::apply::{Change, Tables};
use crate::store::mysql::capture::CaptureMode;
use crate::store::mysql::copy;
use crate::store::mysql::image::quote_ident;
use crate::store::mysql::position::Position;
use crate::store::mysql::ship::{self, Shipped};
use crate::store::mysql::xa::ReplicaConn;

/// What one shipping session knows about which tables have entered replication on the
/// replica: it decides, per change, whether the change ships ([`Entry::ships`]).
#[derive(Debug, Default)]
pub struct Entry {
    /// The replica's record: table → its copy's gate (None: every change applies).
    pub entered: BTreeMap<String, Option<Position>>,
    /// The primary's capture triggers at the last listing: table → how it is captured.
    pub captured: BTreeMap<String, copy::Captured>,
    /// Tables with changes but no capture trigger at the last listing (they left the
    /// policy), with the largest seq of the batch that listed them: a later change of such a
    /// table makes the shipper list again (its trigger is back).
    pub uncaptured: BTreeMap<String, u64>,
    /// Copies refused, with the reason (shown as halted; resume tries again).
    pub refused: BTreeMap<String, String>,
    /// When the capture triggers were last listed (they are listed again every
    /// [`LIST_EVERY`], so a table a reload brings in is copied before its first change).
    pub listed_at: Option<Instant>,
}

/// How often the shipper lists the primary's capture triggers between batches.
pub const LIST_EVERY: Duration = Duration::from_secs(2);

impl Entry {
    /// Whether `s` is applied on the replica: a table that entered by a copy takes the
    /// changes its copy did not see; one waiting for its copy (or refused) takes none (the
    /// copy will hold them); any other table (sync, or no longer captured) takes all.
    /// `copies` says whether the policy in force makes a table async or bounded: a table
    /// not listed yet is judged by it (a listing of `information_schema.TRIGGERS` can miss a
    /// table whose triggers are being created, and a change shipped before its table's copy
    /// meets a replica without the table's rows).
    pub fn ships(&self, s: &Shipped, copies: &dyn Fn(&str) -> bool) -> bool {
        let t = &s.change.tbl;
        match self.entered.get(t) {
            Some(Some(gate)) => !gate.applied(s.change.seq),
            Some(None) => true,
            None if self.captured.contains_key(t) => !self.awaits_copy(t),
            None => !copies(t),
        }
    }

    fn awaits_copy(&self, tbl: &str) -> bool {
        self.captured.get(tbl).is_some_and(|c| matches!(c.mode, CaptureMode::Async | CaptureMode::Latest))
    }

    /// Whether `changes` hold a table this session cannot place yet: the capture triggers
    /// must be listed again before the batch is applied.
    pub fn needs_listing(&self, changes: &[Shipped]) -> bool {
        changes.iter().any(|s| {
            let t = &s.change.tbl;
            !self.entered.contains_key(t)
                && !self.captured.contains_key(t)
                && self.uncaptured.get(t).is_none_or(|bound| s.change.seq > *bound)
        })
    }

    /// Tables captured as async or bounded that the replica has not taken in, once all their
    /// triggers are in place (until then their changes wait, left out, for the copy).
    fn to_copy(&self) -> Vec<String> {
        self.captured
            .iter()
            .filter(|(t, c)| c.complete && self.awaits_copy(t) && !self.entered.contains_key(*t) && !self.refused.contains_key(*t))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Sync tables the replica has not recorded: taken in without a copy.
    fn to_enter(&self) -> Vec<String> {
        self.captured
            .iter()
            .filter(|(t, c)| c.mode == CaptureMode::Sync && !self.entered.contains_key(*t))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Forgets (in memory) the gates the position has passed: they filter nothing any more.
    pub fn drop_passed(&mut self, pos: &Position) {
        for gate in self.entered.values_mut() {
            if gate.as_ref().is_some_and(|g| copy::gate_passed(g, pos)) {
                *gate = None;
            }
        }
    }

    /// The statuses `/status` shows for these tables (halted ones are added by the caller).
    pub fn statuses(&self) -> BTreeMap<String, TableStatus> {
        let mut out: BTreeMap<String, TableStatus> = self
            .entered
            .iter()
            .map(|(t, g)| {
                let snapshot = g.as_ref().map(|g| format!("gate {} ({} holes)", g.high, g.holes.len()));
                (t.clone(), TableStatus { state: TableState::Copied, snapshot, error: None, copied_rows: None })
            })
            .collect();
        for (t, why) in &self.refused {
            out.insert(t.clone(), TableStatus { state: TableState::Halted, snapshot: None, error: Some(why.clone()), copied_rows: None });
        }
        out
    }
}

impl Run {
    /// At the start of a session: the replica's record, and the primary's capture. A replica
    /// that shipped before copies existed (`legacy`: it has a position but no record) takes
    /// every captured table in as it is: those tables are already in replication.
    pub(super) async fn load_entry(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        pos: &Position,
    ) -> Result<Entry, End> {
        let cfg = &self.config;
        let got = self.timed("reading the replica's tables", copy::entered(replica.conn(), &cfg.origin)).await?;
        let mut entry = Entry { entered: got.tables, ..Entry::default() };
        self.list(primary, replica, &mut entry).await?;
        if !got.existed && *pos != Position::default() {
            let mut sql = String::new();
            for t in entry.captured.keys() {
                sql.push_str(&copy::enter_sql(&cfg.origin, t, None, None));
                entry.entered.insert(t.clone(), None);
            }
            if !sql.is_empty() {
                self.timed("recording the tables already in replication", ship::commit_batch(replica.conn(), &sql, "")).await?;
                tracing::info!(replica = %cfg.replica_name, tables = entry.captured.len(), "shipper: tables shipped before initial copies existed are taken in as they are");
            }
        }
        Ok(entry)
    }

    /// Lists the primary's capture triggers. A table that entered and is no longer captured
    /// nor async or bounded in the policy (it left the policy, or was dropped) is forgotten,
    /// so entering again copies it — once its gate filters nothing (its queued changes then
    /// ship as they are).
    pub(super) async fn list(&self, primary: &mut mysql_async::Conn, replica: &mut ReplicaConn, entry: &mut Entry) -> Result<(), End> {
        entry.captured = self.timed("listing the primary's capture triggers", copy::captured(primary)).await?;
        entry.listed_at = Some(Instant::now());
        entry.uncaptured.retain(|t, _| !entry.captured.contains_key(t));
        entry.refused.retain(|t, _| entry.captured.contains_key(t));
        // Judged with the policy too: a listing skips a table whose triggers a concurrent
        // DDL statement is changing (MariaDB warns "was skipped since its definition is being
        // modified"); one the policy still makes async or bounded is kept.
        let copies = &self.config.copies;
        let gone: Vec<String> = entry
            .entered
            .iter()
            .filter(|(t, gate)| gate.is_none() && !entry.captured.contains_key(*t) && !copies(t))
            .map(|(t, _)| t.clone())
            .collect();
        if !gone.is_empty() {
            let sql: String = gone.iter().map(|t| copy::forget_sql(&self.config.origin, t)).collect();
            self.timed("forgetting tables no longer captured", ship::commit_batch(replica.conn(), &sql, "")).await?;
            for t in gone {
                entry.entered.remove(&t);
            }
        }
        Ok(())
    }

    /// Lists again when the last listing is older than [`LIST_EVERY`].
    pub(super) async fn list_if_due(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        entry: &mut Entry,
    ) -> Result<(), End> {
        if entry.listed_at.is_none_or(|at| at.elapsed() >= LIST_EVERY) {
            self.list(primary, replica, entry).await?;
        }
        Ok(())
    }

    /// Lists again for a batch that holds a table this session cannot place.
    pub(super) async fn list_for(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        entry: &mut Entry,
        changes: &[Shipped],
    ) -> Result<(), End> {
        let bound = changes.iter().map(|s| s.change.seq).max().unwrap_or(0);
        self.list(primary, replica, entry).await?;
        for s in changes {
            let t = &s.change.tbl;
            if !entry.entered.contains_key(t) && !entry.captured.contains_key(t) {
                entry.uncaptured.insert(t.clone(), bound);
            }
        }
        Ok(())
    }

    /// Takes in the tables waiting: sync ones recorded, async ones copied (one at a time).
    /// Returns whether any was (the replica's columns are then read again).
    pub(super) async fn enter_tables(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        entry: &mut Entry,
        pos: &Position,
    ) -> Result<bool, End> {
        let cfg = &self.config;
        let (sync, copies) = (entry.to_enter(), entry.to_copy());
        if sync.is_empty() && copies.is_empty() {
            return Ok(false);
        }
        if !sync.is_empty() {
            let sql: String = sync.iter().map(|t| copy::enter_sql(&cfg.origin, t, None, None)).collect();
            self.timed("recording sync tables", ship::commit_batch(replica.conn(), &sql, "")).await?;
            for t in sync {
                entry.entered.insert(t, None);
            }
        }
        for tbl in copies {
            if let Err(why) = self.copy_table(primary, replica, entry, &tbl, pos).await? {
                tracing::error!(replica = %cfg.replica_name, table = %tbl, "shipper: {why}");
                entry.refused.insert(tbl, why);
            }
        }
        Ok(true)
    }

    /// Copies `tbl` to the replica at a snapshot taken now (the replica's position is `pos`)
    /// and records it with its gate. The outer error ends the session (nothing of the copy
    /// committed); the inner one is why the copy is refused.
    pub(super) async fn copy_table(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        entry: &mut Entry,
        tbl: &str,
        pos: &Position,
    ) -> Result<Result<(), String>, End> {
        let cfg = &self.config;
        let (r, resume) = (&cfg.replica_name, format!("capgate resume --replica {} --table {tbl}", cfg.replica_name));
        let cannot = |why: String| Ok(Err(format!("cannot copy {tbl} to replica `{r}` (it entered an async or bounded rule): {why}")));
        let Some(table) = TableName::parse(tbl) else { return cannot("its name cannot be read".into()) };
        let Some(columns) = self.timed("reading the primary's columns", copy::primary_columns(primary, &table)).await? else {
            return cannot("it no longer exists on the primary".into());
        };
        let tables: Tables = self.timed("reading the replica's tables", ship::replica_tables(replica.conn())).await?;
        let Some(theirs) = tables.get(&table) else {
            return cannot(format!("the table does not exist on the replica; create it there with the primary's columns, then `{resume}` (the other tables ship meanwhile)"));
        };
        if let Some(c) = columns.iter().find(|c| !c.generated && !theirs.iter().any(|t| t.name == c.name)) {
            return cannot(format!(
                "column `{}` does not exist on the replica; add it there, then `{resume}` (the other tables ship meanwhile)",
                c.name
            ));
        }
        let rows_sql = match copy::rows_sql(&table, &columns) {
            Ok(s) => s,
            Err(e) => return cannot(e.to_string()),
        };
        let target = format!("{}.{}", quote_ident(&table.schema), quote_ident(&table.name));
        let rc = replica.conn();

        self.stats.set_phase(Phase::Copying);
        let rows = Arc::new(AtomicU64::new(0));
        self.show_copying(entry, tbl, &rows);
        // The replica's table, locked against its site's writers until the copy commits.
        self.timed("opening the copy on the replica", rc.query_drop("START TRANSACTION; SET foreign_key_checks = 0")).await?;
        let present: Option<u64> =
            self.timed("locking the replica's table", rc.query_first(format!("SELECT COUNT(*) FROM {target} FOR UPDATE"))).await?;
        let present = present.unwrap_or(0);
        // Read under the lock: the replica's capgate cannot add its trigger (DDL waits for
        // the table's metadata lock) until the copy commits, so what is read stays true.
        let writes = if cfg.replica_takes_writes {
            Some("it is configured with takes_writes = true")
        } else if present > 0 && self.timed("looking for capture on the replica", copy::captured_on_replica(rc, &table)).await? {
            Some("the replica's own capgate captures it there")
        } else {
            None
        };
        if present > 0 {
            if let Some(why) = writes {
                let _ = rc.query_drop("ROLLBACK; SET foreign_key_checks = 1").await;
                self.stats.set_phase(Phase::Running);
                *self.stats.copying.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return cannot(format!(
                    "the replica's table holds {present} rows and its site takes writes ({why}), so a copy would erase them; \
                     capgate never empties such a table. If those rows are not wanted, empty the table on `{r}`; then `{resume}`"
                ));
            }
            self.timed("emptying the replica's table", rc.query_drop(format!("DELETE FROM {target}"))).await?;
        }
        // The snapshot, and in it what the copy holds of the changes still to ship.
        self.timed("opening the copy's snapshot on the primary", copy::begin_snapshot(primary)).await?;
        let gate = self.timed("reading the changes the copy sees", copy::gate(primary, pos)).await?;
        let copied = self.stream_rows(primary, rc, tbl, &rows_sql, &tables, &rows).await?;
        self.timed("ending the copy's snapshot", primary.query_drop("COMMIT")).await?;
        let end = format!("{}SET foreign_key_checks = 1; COMMIT", copy::enter_sql(&cfg.origin, tbl, Some(&gate), Some(copied)));
        self.timed("committing the copy on the replica", rc.query_drop(end)).await?;
        *self.stats.copying.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.stats.set_phase(Phase::Running);
        tracing::info!(replica = %r, table = %tbl, rows = copied, gate = gate.high, holes = gate.holes.len(), "shipper: table copied; its later changes ship");
        entry.entered.insert(tbl.to_owned(), Some(gate));
        entry.refused.remove(tbl);
        Ok(Ok(()))
    }

    /// Streams the rows of `rows_sql` (row images) from the primary into the replica in
    /// chunks of multi-row INSERTs; returns how many.
    async fn stream_rows(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut mysql_async::Conn,
        tbl: &str,
        rows_sql: &str,
        tables: &Tables,
        counter: &AtomicU64,
    ) -> Result<u64, End> {
        let cfg = &self.config;
        let mut result = self.timed("reading the rows to copy", primary.query_iter(rows_sql)).await?;
        let (mut chunk, mut bytes, mut total) = (Vec::new(), 0usize, 0u64);
        loop {
            let row = self.timed("reading the rows to copy", result.next()).await?;
            let done = row.is_none();
            if let Some(row) = row {
                let image: String = mysql_async::from_row(row);
                bytes += image.len();
                chunk.push(Change { seq: 0, tbl: tbl.to_owned(), op: "I".into(), old: None, new: Some(image) });
            }
            if !chunk.is_empty() && (done || chunk.len() >= cfg.batch_rows || bytes >= cfg.batch_bytes) {
                let sql =
                    crate::store::mysql::batched::statements(&chunk, tables).map_err(|e| End::Failed(format!("copying {tbl}: {e}")))?;
                self.timed("loading copied rows into the replica", replica.query_drop(sql.sql)).await?;
                total += chunk.len() as u64;
                counter.store(total, Ordering::Relaxed);
                chunk.clear();
                bytes = 0;
            }
            if done {
                return Ok(total);
            }
        }
    }

    fn show_copying(&self, entry: &Entry, tbl: &str, rows: &Arc<AtomicU64>) {
        let mut states = entry.statuses();
        states.insert(tbl.to_owned(), TableStatus { state: TableState::Copying, snapshot: None, error: None, copied_rows: Some(0) });
        let mut shown = self.stats.tables.lock().unwrap_or_else(|p| p.into_inner());
        for (t, s) in states {
            shown.insert(t, s);
        }
        *self.stats.copying.lock().unwrap_or_else(|p| p.into_inner()) = Some((tbl.to_owned(), rows.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mysql::copy::Captured;

    fn change(tbl: &str, seq: u64) -> Shipped {
        Shipped { change: Change { seq, tbl: tbl.into(), op: "U".into(), old: None, new: None }, at: 0.0 }
    }

    #[test]
    fn a_table_is_copied_only_once_all_its_triggers_are_in_place_and_waits_meanwhile() {
        let mut e = Entry::default();
        e.captured.insert("s.half".into(), Captured { mode: CaptureMode::Async, complete: false });
        e.captured.insert("s.sync".into(), Captured { mode: CaptureMode::Sync, complete: true });
        assert!(e.to_copy().is_empty(), "an update trigger still missing: a copy then could miss updates");
        let none = |_: &str| false;
        assert!(!e.ships(&change("s.half", 5), &none), "its changes wait for the copy");
        assert!(e.ships(&change("s.sync", 5), &none) && e.to_enter() == ["s.sync"]);
        assert!(e.ships(&change("s.gone", 5), &none), "no longer captured nor replicated: its queued changes ship");
        assert!(!e.ships(&change("s.gone", 5), &|t: &str| t == "s.gone"), "async in the policy, not listed yet: it waits");
        e.captured.insert("s.half".into(), Captured { mode: CaptureMode::Async, complete: true });
        assert_eq!(e.to_copy(), ["s.half"]);
    }

    #[test]
    fn after_its_copy_a_table_takes_only_what_the_gate_did_not_see() {
        let mut e = Entry::default();
        let gate = Position::default().after(&[1, 2, 4], 0.0); // 3 was open at the snapshot
        e.entered.insert("s.t".into(), Some(gate));
        let all = |_: &str| true;
        assert!(!e.ships(&change("s.t", 4), &all) && e.ships(&change("s.t", 3), &all) && e.ships(&change("s.t", 5), &all));
        assert!(e.needs_listing(&[change("s.new", 9)]), "a table never listed is listed before it ships");
        e.uncaptured.insert("s.new".into(), 9);
        assert!(!e.needs_listing(&[change("s.new", 9)]) && e.needs_listing(&[change("s.new", 10)]));
        e.drop_passed(&Position::default().after(&[1, 2], 0.0));
        assert!(e.entered["s.t"].is_some(), "4, which the copy holds, is still to come");
        e.drop_passed(&Position::default().after(&[1, 2, 4], 0.0));
        assert!(e.entered["s.t"].is_none(), "only 3 is left, which the gate lets through anyway");
    }
}

//! A table halted alone on a MySQL replica, and its resume ([`crate::store::mysql::held`]).
//!
//! A `halt` conflict (or a table or column the replica lacks) stops that table only: the
//! primary keeps its changes from the first one not applied, the replica records the halt,
//! and the batch is applied again without them — the other tables keep shipping. An operator
//! repairs the replica's rows and resumes the table (`capgate resume`, `POST
//! /tables/<table>/resume`): its held changes are applied in `seq` order in one replica
//! transaction that also ends the halt. A held change that still does not fit leaves the
//! table halted, with that error. A table halted because its initial copy was refused is
//! copied again instead (decision 0030).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::copy::Entry;
use super::{End, Run};
use crate::replicate::apply::Conflict;
use crate::replicate::shipper::{TableState, TableStatus};
use crate::store::mysql::apply::Tables;
use crate::store::mysql::held::{self, Halt};
use crate::store::mysql::position::Position;
use crate::store::mysql::ship::{self, Shipped};
use crate::store::mysql::xa::ReplicaConn;

/// An operator's request to resume `table`, answered on `done`.
pub struct ResumeRequest {
    pub table: String,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// A running MySQL shipper, which also takes resume requests; stops when dropped.
pub struct MyShipper {
    pub(super) running: crate::replicate::shipper::ShipperHandle,
    pub(super) commands: mpsc::Sender<ResumeRequest>,
}

impl std::ops::Deref for MyShipper {
    type Target = crate::replicate::shipper::ShipperHandle;

    fn deref(&self) -> &Self::Target {
        &self.running
    }
}

impl MyShipper {
    /// Resumes a halted table: answers once its held changes are applied, or with why not.
    pub async fn resume(&self, table: &str, timeout: Duration) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        let request = ResumeRequest { table: table.to_owned(), done };
        match tokio::time::timeout(timeout, async {
            self.commands.send(request).await.map_err(|_| "the shipper has stopped".to_owned())?;
            rx.await.map_err(|_| "the shipper has stopped".to_owned())?
        })
        .await
        {
            Ok(r) => r,
            Err(_) => {
                Err(format!("the shipper did not take the request within {timeout:?} (it may be connecting or not the one shipping)"))
            }
        }
    }
}

/// The halted tables of one shipping session, as the replica records them.
pub type Halted = BTreeMap<String, Halt>;

impl Run {
    /// At the start of a session: the replica's halted tables, mirrored on the primary (a
    /// halt recorded just before a crash may lack its mirror) and shown in the stats.
    pub(super) async fn load_halted(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        entry: &Entry,
    ) -> Result<Halted, End> {
        let cfg = &self.config;
        let halted = self.timed("reading the halted tables", held::halted(replica.conn(), &cfg.origin)).await?;
        for (tbl, h) in &halted {
            self.timed("holding a halted table's changes", held::hold(primary, &cfg.replica_name, tbl, h.from_seq)).await?;
        }
        self.show(&halted, entry);
        Ok(halted)
    }

    /// Halts the table of `conflict`: holds its changes in `batch` and after on the primary,
    /// then records the halt on the replica.
    pub(super) async fn halt(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        halted: &mut Halted,
        entry: &Entry,
        batch: &[Shipped],
        conflict: &Conflict,
    ) -> Result<(), End> {
        let cfg = &self.config;
        let tbl = conflict.tbl.clone();
        let from_seq = batch.iter().filter(|s| s.change.tbl == tbl).map(|s| s.change.seq).min().unwrap_or(0);
        let detail = conflict.detail.clone().unwrap_or_default();
        let error = format!("conflict {} at change {} (on_conflict = halt): {detail}", conflict.kind, conflict.seq.unwrap_or(0));
        let h = Halt { from_seq, error };
        self.timed("holding a halted table's changes", held::hold(primary, &cfg.replica_name, &tbl, from_seq)).await?;
        self.timed("recording a halted table", held::halt(replica.conn(), &cfg.origin, &tbl, &h)).await?;
        tracing::error!(replica = %cfg.replica_name, table = %tbl, from_seq, "shipper: {}; this table stops until resumed (`capgate resume --replica {} --table {tbl}`), the others go on", h.error, cfg.replica_name);
        halted.insert(tbl, h);
        self.show(halted, entry);
        Ok(())
    }

    /// Answers the resume requests waiting, if any.
    pub(super) async fn take_requests(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        halted: &mut Halted,
        tables: &mut Tables,
        entry: &mut Entry,
        pos: &Position,
    ) -> Result<(), End> {
        loop {
            let Ok(request) = self.commands.lock().await.try_recv() else { return Ok(()) };
            let answer = self.resume(primary, replica, halted, tables, entry, pos, &request.table).await?;
            let _ = request.done.send(answer);
        }
    }

    /// Applies `tbl`'s held changes and ends its halt, in one replica transaction; a table
    /// whose copy was refused is copied instead. The outer error ends the session (the link
    /// failed); the inner one is the operator's answer.
    #[allow(clippy::too_many_arguments)]
    async fn resume(
        &self,
        primary: &mut mysql_async::Conn,
        replica: &mut ReplicaConn,
        halted: &mut Halted,
        tables: &mut Tables,
        entry: &mut Entry,
        pos: &Position,
        tbl: &str,
    ) -> Result<Result<(), String>, End> {
        let cfg = &self.config;
        let Some(h) = halted.get(tbl).cloned() else {
            if entry.refused.contains_key(tbl) {
                // Its copy was refused: the operator has fixed the replica; copy again.
                let copied = self.copy_table(primary, replica, entry, tbl, pos).await?;
                if let Err(why) = &copied {
                    entry.refused.insert(tbl.to_owned(), why.clone());
                }
                *tables = self.timed("reading the replica's tables", ship::replica_tables(replica.conn())).await?;
                self.show(halted, entry);
                return Ok(copied.map_err(|why| format!("{tbl} stays halted: {why}")));
            }
            return Ok(Err(format!("{tbl} is not halted on replica `{}`", cfg.replica_name)));
        };
        // The operator may have created a table or column since.
        *tables = self.timed("reading the replica's tables", ship::replica_tables(replica.conn())).await?;
        let mut backlog = self.timed("reading the held changes", held::backlog(primary, tbl, h.from_seq, pos)).await?;
        // Changes the table's copy already holds stay out.
        backlog.retain(|s| entry.ships(s, &*cfg.copies));
        // A carried DDL statement among them (decision 0040) runs apart: the changes before it
        // are applied with the halt's start moved to it, then the statement, with the start
        // moved past it; a resume cut short goes on from there next time.
        while let Some(k) = backlog.iter().position(|s| s.change.op == crate::store::mysql::ddl::OP) {
            let rest = backlog.split_off(k);
            if let Err(why) = self.resume_part(replica, tables, tbl, &backlog, &rest[0]).await? {
                return Ok(Err(format!("{tbl} stays halted: {why}")));
            }
            backlog = rest[1..].to_vec();
        }
        let statements = match ship::statements(&backlog, tables) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("{tbl} stays halted: {e}"))),
        };
        match tokio::time::timeout(cfg.deadline, ship::commit_batch(replica.conn(), &statements, &held::resume_sql(&cfg.origin, tbl))).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e @ mysql_async::Error::Server(_))) => {
                return Ok(Err(format!("{tbl} stays halted: a held change still does not apply: {e}")))
            }
            Ok(Err(e)) => return Err(End::Failed(format!("resuming {tbl}: {e}"))),
            Err(_) => return Err(End::Failed(format!("resuming {tbl} did not finish within {:?}", cfg.deadline))),
        }
        halted.remove(tbl);
        self.show(halted, entry);
        self.timed("releasing the held changes", held::release(primary, &cfg.replica_name, tbl)).await?;
        tracing::info!(replica = %cfg.replica_name, table = %tbl, changes = backlog.len(), "shipper: table resumed, its held changes applied");
        Ok(Ok(()))
    }

    /// Part of a resume: `before` (held changes of `tbl`) applied with the halt's start moved
    /// to the carried DDL statement `ddl`, then `ddl` run as the shipper runs it, with the start
    /// moved past it. The inner error is why the table stays halted.
    async fn resume_part(
        &self,
        replica: &mut ReplicaConn,
        tables: &mut Tables,
        tbl: &str,
        before: &[Shipped],
        ddl: &Shipped,
    ) -> Result<Result<(), String>, End> {
        use crate::store::mysql::ddl::{self, Carried, Step};
        let cfg = &self.config;
        let seq = ddl.change.seq;
        let statements = match ship::statements(before, tables) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let advance = held::advance_halt_sql(&cfg.origin, tbl, seq);
        let applied = ship::commit_batch(replica.conn(), &statements, &advance);
        match tokio::time::timeout(cfg.deadline, applied).await {
            Ok(Ok(())) => {}
            Ok(Err(e @ mysql_async::Error::Server(_))) => return Ok(Err(format!("a held change still does not apply: {e}"))),
            Ok(Err(e)) => return Err(End::Failed(format!("resuming {tbl}: {e}"))),
            Err(_) => return Err(End::Failed(format!("resuming {tbl} did not finish within {:?}", cfg.deadline))),
        }
        let (Ok(carried), Some(table)) =
            (Carried::from_json(ddl.change.new.as_deref().unwrap_or_default()), crate::classify::TableName::parse(tbl))
        else {
            return Ok(Err(format!("the carried DDL statement at change {seq} cannot be read")));
        };
        match self
            .timed(
                "running a held DDL statement",
                ddl::run_step(replica.conn(), &cfg.origin, seq, &table, &carried, super::ddl::STEP_WAIT_SECS),
            )
            .await?
        {
            Step::Failed(e) => return Ok(Err(format!("the carried statement `{}` still fails on the replica: {e}", carried.ddl))),
            Step::Busy(e) => return Ok(Err(format!("the carried statement `{}` waits on the replica: {e}; resume again", carried.ddl))),
            Step::Ran | Step::AlreadyDone => {}
        }
        let moved = format!("{}{}", ddl::end_step_sql(&cfg.origin, seq), held::advance_halt_sql(&cfg.origin, tbl, seq + 1));
        self.timed("resuming", ship::commit_batch(replica.conn(), &moved, "")).await?;
        *tables = self.timed("reading the replica's tables", ship::replica_tables(replica.conn())).await?;
        Ok(Ok(()))
    }

    /// Publishes the tables the replica has taken in, those whose copy was refused, and the
    /// halted ones (with their errors) in the stats.
    pub(super) fn show(&self, halted: &Halted, entry: &Entry) {
        let mut states = entry.statuses();
        for (t, h) in halted {
            states.insert(
                t.clone(),
                TableStatus { state: TableState::Halted, snapshot: None, error: Some(h.error.clone()), copied_rows: None },
            );
        }
        *self.stats.tables.lock().unwrap_or_else(|p| p.into_inner()) = states;
    }
}

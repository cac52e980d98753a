//! The shipper task: leadership on the primary, one replica session at a time, and in it the
//! loop of copies and ranges.
//!
//! Failures: anything failing on the replica ends the replica session (its connection is
//! dropped, whatever it was doing) and a new one starts after a backoff; a failure on the
//! primary ends the leadership too. A partition reported by the health view drops the replica
//! session at once; the next one starts as soon as the view leaves that state. Every wait has
//! a deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_postgres::Client;

use super::apply_range::{Ranged, Stmts};
use super::copy::{self, CopyError};
use super::range::Position;
use super::tables::{self, TableState, TableStatus};
use super::{Command, Phase, ShipperConfig, ShipperStats};
use crate::replicate::apply::{self, explain, Conflict};
use crate::sites::health::State;
use crate::sites::AbortOnDrop;

/// The `application_name` of the shipper's connections, followed by the origin: on a
/// replica, a session of that name that is not this shipper's is one an earlier shipper left
/// behind ([`ORPHANS_SQL`]).
const APPLICATION_NAME: &str = "capgate shipper";

/// Ends the replica sessions an earlier shipper of this origin left behind (a capgate process
/// killed, a connection cut or given up on): the replica runs such a session's apply to its
/// end, holding the rows' locks and a core meanwhile, and the new session's apply waited
/// behind it (seen in the long chaos run: up to three sessions of one origin at once, pages
/// taking seconds). Only the holder of the shipper lock on the primary runs this, so every
/// other session of the name is stale; it waits up to 5 s for each to exit (PostgreSQL 14+),
/// so what it committed, or did not, is settled before the position is read. Sessions of the
/// same role only (a role may end its own sessions); a failure is logged and shipping goes on
/// (the position's fence keeps a stale session from applying anything twice).
const ORPHANS_SQL: &str = "SELECT count(pg_catalog.pg_terminate_backend(pid, 5000)) FROM pg_catalog.pg_stat_activity \
     WHERE application_name = $1 AND pid <> pg_catalog.pg_backend_pid() AND datname = pg_catalog.current_database() AND usename = current_user";

/// How often the captured tables are listed again, and an idle range is recorded.
const REFRESH: Duration = Duration::from_secs(1);

/// How often the primary session is checked while the replica is partitioned.
const PRIMARY_CHECK: Duration = Duration::from_secs(1);

/// Why a session ended.
pub(super) enum Fail {
    /// The primary (or the lock) is gone: give up leadership.
    Primary(String),
    /// The replica failed: reconnect to it, keep the lock.
    Replica(String),
    /// The health view says partitioned: wait for it to change, no backoff.
    Partitioned,
}

/// The task's state.
pub(super) struct Run {
    pub(super) config: ShipperConfig,
    pub(super) stats: Arc<ShipperStats>,
    wake: Arc<Notify>,
    commands: mpsc::Receiver<Command>,
}

/// A connected client whose connection task ends with it.
struct Conn {
    client: Client,
    _task: AbortOnDrop<()>,
}

impl Run {
    pub(super) fn new(config: ShipperConfig, stats: Arc<ShipperStats>, wake: Arc<Notify>, commands: mpsc::Receiver<Command>) -> Run {
        Run { config, stats, wake, commands }
    }

    pub(super) async fn forever(mut self) {
        let mut failures = 0u32;
        loop {
            let fail = self.lead().await;
            self.stats.leader.store(false, Ordering::Relaxed);
            if let Fail::Primary(e) | Fail::Replica(e) = fail {
                self.failed(&e);
            }
            failures = failures.saturating_add(1);
            tokio::time::sleep(self.backoff(failures)).await;
        }
    }

    fn failed(&self, e: &str) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(replica = %self.config.replica_name, origin = %self.config.origin, "shipper: {e}; retrying");
        *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_owned());
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.min(16).saturating_sub(1);
        self.config.backoff_min.saturating_mul(factor).min(self.config.backoff_max)
    }

    pub(super) async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.config.deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {}", explain(&e))),
            Err(_) => Err(format!("{what} did not finish within {:?}", self.config.deadline)),
        }
    }

    /// This shipper's `application_name` (see [`APPLICATION_NAME`]).
    fn application_name(&self) -> String {
        format!("{APPLICATION_NAME} {}", self.config.origin)
    }

    async fn connect(&self, upstream: &crate::backend::postgres::Upstream, what: &str) -> Result<Conn, String> {
        match tokio::time::timeout(self.config.deadline, upstream.client_with_task(&self.application_name())).await {
            Ok(Ok((client, task))) => Ok(Conn { client, _task: AbortOnDrop(task) }),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what} did not finish within {:?}", self.config.deadline)),
        }
    }

    fn partitioned(&self) -> bool {
        self.config.health.as_ref().is_some_and(|h| h.state() == State::Partitioned)
    }

    /// Resolves when the health view says partitioned (never without a health view).
    async fn partition(health: Option<crate::sites::HealthView>) {
        match health {
            Some(h) => {
                let _ = h.wait_state(State::Partitioned, Duration::from_secs(86_400 * 365)).await;
            }
            None => std::future::pending().await,
        }
    }

    /// One leadership: connect to the primary, take the lock, ship until something fails.
    async fn lead(&mut self) -> Fail {
        self.stats.set_phase(Phase::Connecting);
        let mut primary = match self.connect(&self.config.primary, "connecting to the primary").await {
            Ok(c) => c,
            Err(e) => return Fail::Primary(e),
        };
        let install = crate::store::postgres::primary::install_primary(&primary.client);
        if let Err(e) = self.timed("installing the capgate schema on the primary", install).await {
            return Fail::Primary(e);
        }
        let key = format!("capgate shipper {} -> {}", self.config.origin, self.config.replica_name);
        loop {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
            let lock = primary.client.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &params);
            match self.timed("taking the shipper lock", lock).await.map(|r| r.try_get::<_, bool>(0)) {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {
                    self.stats.set_phase(Phase::Standby);
                    self.refuse_commands("another capgate process ships to this replica");
                    tokio::time::sleep(self.config.lock_poll).await
                }
                Ok(Err(e)) => return Fail::Primary(e.to_string()),
                Err(e) => return Fail::Primary(e),
            }
        }
        self.stats.leader.store(true, Ordering::Relaxed);
        tracing::info!(replica = %self.config.replica_name, origin = %self.config.origin, "shipper: holds the lock, shipping");
        let mut failures = 0u32;
        loop {
            if self.partitioned() {
                self.stats.set_phase(Phase::Partitioned);
                if let Some(h) = &self.config.health {
                    // The primary session (and the lock it holds) is checked meanwhile.
                    while h.state() == State::Partitioned {
                        if let Err(e) = self.check_primary(&primary.client).await {
                            return Fail::Primary(e);
                        }
                        let _ = h
                            .wait_for("the replica to leave the partitioned state", PRIMARY_CHECK, |s| s.state != State::Partitioned)
                            .await;
                    }
                }
                failures = 0;
                tracing::info!(replica = %self.config.replica_name, "shipper: the replica is no longer partitioned; shipping again");
            }
            self.stats.set_phase(Phase::ConnectingReplica);
            let health = self.config.health.clone();
            let fail = tokio::select! {
                fail = self.ship(&mut primary.client) => fail,
                _ = Run::partition(health) => Fail::Partitioned,
            };
            match fail {
                Fail::Primary(e) => return Fail::Primary(e),
                Fail::Partitioned => {
                    tracing::warn!(replica = %self.config.replica_name, "shipper: the replica is partitioned; its connection is dropped until it heals");
                    // An interrupted range left the primary's read transaction behind.
                    if primary.client.batch_execute("ROLLBACK").await.is_err() {
                        return Fail::Primary("the primary connection broke while the replica was partitioned".into());
                    }
                }
                Fail::Replica(e) => {
                    self.failed(&e);
                    failures = failures.saturating_add(1);
                    if let Err(e) = self.check_primary(&primary.client).await {
                        return Fail::Primary(e);
                    }
                    // Back off, but wake at once when the replica is seen partitioned (then
                    // healed), so shipping resumes with the health view, not the backoff.
                    let health = self.config.health.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff(failures)) => {}
                        _ = Run::partition(health) => {}
                    }
                }
            }
        }
    }

    /// Answers every queued operator request with `why` (this process does not ship now).
    fn refuse_commands(&mut self, why: &str) {
        while let Ok(Command::Resume { done, .. }) = self.commands.try_recv() {
            let _ = done.send(Err(why.to_owned()));
        }
    }

    /// One replica session: copies and ranges until a failure.
    async fn ship(&mut self, primary: &mut Client) -> Fail {
        let cfg = self.config.clone();
        let replica = match self.connect(&cfg.replica, "connecting to the replica").await {
            Ok(c) => c,
            Err(e) => return Fail::Replica(e),
        };
        let mut replica = replica;
        if let Err(e) = self.timed("installing the capgate schema on the replica", apply::install_replica(&replica.client)).await {
            return Fail::Replica(e);
        }
        // Once per session rather than in every apply's transaction: changing it resets the
        // server's plan cache. Without the privilege the apply says so (SQLSTATE 42501).
        let _ =
            self.timed("setting session_replication_role", replica.client.batch_execute("SET session_replication_role = replica")).await;
        let stmts = match self.prepare(&replica.client).await {
            Ok(s) => s,
            Err(e) => return Fail::Replica(e),
        };
        let name = self.application_name();
        match self.timed("ending sessions an earlier shipper left on the replica", replica.client.query_one(ORPHANS_SQL, &[&name])).await {
            Ok(row) => {
                let ended: i64 = row.try_get(0).unwrap_or(0);
                if ended > 0 {
                    tracing::info!(replica = %cfg.replica_name, ended, "shipper: ended replica sessions an earlier shipper left behind");
                }
            }
            Err(e) => tracing::warn!(replica = %cfg.replica_name, "shipper: {e}"),
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&cfg.origin];
        let read = replica.client.query_opt("SELECT snapshot::text, target::text, seq FROM capgate.applied WHERE origin = $1", &params);
        let mut at = match self.timed("reading the replica's position", read).await {
            Ok(None) => Position::default(),
            Ok(Some(r)) => match (r.try_get(0), r.try_get(1), r.try_get(2)) {
                (Ok(snapshot), Ok(target), Ok(seq)) => Position { snapshot, target, seq },
                _ => return Fail::Replica("reading the replica's position: an unexpected answer".into()),
            },
            Err(e) => return Fail::Replica(e),
        };
        let mut states = match self.timed("reading the table states", tables::read(&replica.client, &cfg.origin)).await {
            Ok(s) => s,
            Err(e) => return Fail::Replica(e),
        };
        self.publish_tables(&states);
        *self.stats.applied_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = at.snapshot.clone();
        // Only A: the changes of a range under way stay on the primary until it completes.
        if let Some(snapshot) = &at.snapshot {
            if let Err(e) = self.note_shipped(primary, snapshot).await {
                return Fail::Primary(e);
            }
        }
        self.stats.set_phase(Phase::Running);
        let mut async_tables: Vec<String> = Vec::new();
        // Every captured table listed (async and sync): a range waits until it holds them all.
        let mut listed_tables: Vec<String> = Vec::new();
        // Tables an operator resumed: copied again even without initial copies.
        let mut resumed: std::collections::BTreeSet<String> = Default::default();
        let mut listed = Instant::now() - REFRESH;
        let mut last_advance = Instant::now();
        let mut last_prune = Instant::now();
        loop {
            while let Ok(command) = self.commands.try_recv() {
                let Command::Resume { table, adopt, done } = command;
                if adopt {
                    match self.adopt(primary, &replica.client, &table, &mut states).await {
                        Ok(()) => {
                            let _ = done.send(Ok(()));
                        }
                        Err((answer, fail)) => {
                            let _ = done.send(Err(answer));
                            if let Some(fail) = fail {
                                return fail;
                            }
                        }
                    }
                    continue;
                }
                let forgot = self.timed("resuming a table", tables::forget(&replica.client, &cfg.origin, &table)).await;
                states.remove(&table);
                resumed.insert(table.clone());
                self.publish_tables(&states);
                tracing::info!(replica = %cfg.replica_name, table = %table, "shipper: table resumed by an operator; it is copied again");
                let failed = forgot.as_ref().err().cloned();
                let _ = done.send(forgot.map(|_| ()));
                if let Some(e) = failed {
                    return Fail::Replica(e);
                }
            }
            if listed.elapsed() >= REFRESH {
                listed = Instant::now();
                let sync_tables;
                (async_tables, sync_tables) = match self.timed("listing the captured tables", tables::captured(primary)).await {
                    Ok(t) => t,
                    Err(e) => return Fail::Primary(e),
                };
                listed_tables = async_tables.iter().chain(&sync_tables).cloned().collect();
                let unknown: Vec<String> = sync_tables.into_iter().filter(|t| !states.contains_key(t)).collect();
                if !unknown.is_empty() {
                    let since = match self.timed("reading when capture began", tables::capture_since(primary, &unknown)).await {
                        Ok(s) => s,
                        Err(e) => return Fail::Primary(e),
                    };
                    let adopt = tables::adopt(&replica.client, &cfg.origin, &unknown, &since);
                    if let Err(e) = self.timed("recording the sync tables", adopt).await {
                        return Fail::Replica(e);
                    }
                    for t in unknown {
                        let snapshot = since.get(&t).cloned();
                        states.insert(t, TableStatus { state: TableState::Copied, snapshot, error: None, copied_rows: None });
                    }
                    self.publish_tables(&states);
                }
            }
            // Not known to the replica, or `copying` there: a copy an earlier session began
            // and never committed (cut off by a partition or a kill; the mark commits before
            // the copy's own transaction). Left as it was, such a table was in no range again.
            let uncopied: Vec<String> = async_tables
                .iter()
                .filter(|t| states.get(*t).is_none_or(|s| s.state == TableState::Copying) && (cfg.initial_copy || resumed.contains(*t)))
                .cloned()
                .collect();
            if !uncopied.is_empty() {
                for table in uncopied {
                    resumed.remove(&table);
                    match self.copy(primary, &mut replica.client, &table, &mut states).await {
                        Ok(()) => {}
                        Err(fail) => return fail,
                    }
                }
                self.stats.set_phase(Phase::Running);
            }
            let filters = tables::filters(&states, &async_tables, cfg.initial_copy);
            let range_began = Instant::now();
            let ranged = self.range(primary, &replica.client, &stmts, &mut at, &filters, &listed_tables).await;
            match ranged {
                Ok(Ranged::Applied { snapshot }) => {
                    last_advance = Instant::now();
                    *self.stats.applied_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = at.snapshot.clone();
                    if let Err(e) = self.note_shipped(primary, &snapshot).await {
                        return Fail::Primary(e);
                    }
                    // Batching by time (decision 0037): what commits meanwhile goes in the next range.
                    if let Some(rest) = cfg.ship_interval.checked_sub(range_began.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                }
                Ok(Ranged::Empty { snapshot }) => {
                    // Record an idle range now and then, so lag and pruning move on — at once
                    // when the replica has applied nothing yet for this origin (its lag is
                    // unknown until then, and bounded tables refuse).
                    let due = at.snapshot.is_none() || last_advance.elapsed() >= REFRESH;
                    if due && at.snapshot.as_deref() != Some(snapshot.as_str()) {
                        if let Err(e) = self.advance_only(&replica.client, &stmts, &at, &snapshot).await {
                            return Fail::Replica(e);
                        }
                        last_advance = Instant::now();
                        at = Position { snapshot: Some(snapshot.clone()), target: None, seq: None };
                        *self.stats.applied_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = at.snapshot.clone();
                        if let Err(e) = self.note_shipped(primary, &snapshot).await {
                            return Fail::Primary(e);
                        }
                    }
                    let _ = tokio::time::timeout(cfg.poll_interval, self.wake.notified()).await;
                    continue;
                }
                Ok(Ranged::Unlisted { tables }) => {
                    tracing::debug!(replica = %cfg.replica_name, ?tables, "shipper: tables captured since the last listing; listing again before shipping");
                    listed = Instant::now() - REFRESH;
                    continue;
                }
                Ok(Ranged::Halted { table, error, conflict }) => {
                    tracing::error!(replica = %cfg.replica_name, table = %table, "shipper: {error}; this table stops until it is resumed, the others ship on");
                    self.conflict(&conflict);
                    if let Err(e) = self.timed("recording a halted table", tables::halt(&replica.client, &cfg.origin, &table, &error)).await
                    {
                        return Fail::Replica(e);
                    }
                    states.insert(table, TableStatus { state: TableState::Halted, snapshot: None, error: Some(error), copied_rows: None });
                    self.publish_tables(&states);
                    continue;
                }
                Err(fail) => return fail,
            }
            if last_prune.elapsed() >= cfg.prune_interval {
                last_prune = Instant::now();
                if let Err(e) = self.prune(primary).await {
                    return Fail::Primary(e);
                }
            }
        }
    }

    async fn prepare(&self, replica: &Client) -> Result<Stmts, String> {
        let apply = "SELECT capgate.apply_changes($1, $2::text::json, 'async', $3::text::json)::text";
        let advance = "SELECT capgate.advance($1, $2::text::pg_snapshot, $3::bigint, $4::text::pg_snapshot, $5::bigint)";
        Ok(Stmts {
            apply: self.timed("preparing the apply statement", replica.prepare(apply)).await?,
            advance: self.timed("preparing the advance statement", replica.prepare(advance)).await?,
        })
    }

    /// Copies one table; a refusal halts the table (the others go on), other failures end
    /// the session.
    async fn copy(
        &self,
        primary: &mut Client,
        replica: &mut Client,
        table: &str,
        states: &mut BTreeMap<String, TableStatus>,
    ) -> Result<(), Fail> {
        let cfg = &self.config;
        self.stats.set_phase(Phase::Copying);
        let progress = Arc::new(AtomicU64::new(0));
        *self.stats.copying.lock().unwrap_or_else(|p| p.into_inner()) = Some((table.to_owned(), progress.clone()));
        states.insert(table.to_owned(), TableStatus { state: TableState::Copying, snapshot: None, error: None, copied_rows: Some(0) });
        self.publish_tables(states);
        tracing::info!(replica = %cfg.replica_name, table = %table, "shipper: copying the table to the replica before shipping its changes");
        let started = Instant::now();
        let to = copy::Target { origin: &cfg.origin, replica_name: &cfg.replica_name, takes_writes: cfg.replica_takes_writes };
        let copied = copy::copy_table(primary, replica, to, table, &progress, cfg.deadline).await;
        *self.stats.copying.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match copied {
            Ok(done) => {
                match done {
                    copy::Copied::Loaded(rows) => {
                        tracing::info!(replica = %cfg.replica_name, table = %table, rows, elapsed = ?started.elapsed(), "shipper: table copied; its changes ship from now on")
                    }
                    copy::Copied::Equal(rows) => {
                        tracing::info!(replica = %cfg.replica_name, table = %table, rows, elapsed = ?started.elapsed(), "shipper: the replica site, which takes writes of its own, holds exactly the primary's rows: taken in without a copy; its changes ship from now on")
                    }
                }
                let fresh = self.timed("reading the table states", tables::read(replica, &cfg.origin)).await.map_err(Fail::Replica)?;
                *states = fresh;
                self.publish_tables(states);
                Ok(())
            }
            Err(CopyError::Refused(why)) => {
                tracing::error!(replica = %cfg.replica_name, table = %table, "shipper: {why}; this table is not shipped until it is resumed");
                // The primary's read transaction may still be open after a failed copy.
                let _ = primary.batch_execute("ROLLBACK").await;
                let _ = replica.batch_execute("ROLLBACK").await;
                self.timed("recording a refused table", tables::halt(replica, &cfg.origin, table, &why)).await.map_err(Fail::Replica)?;
                states.insert(
                    table.to_owned(),
                    TableStatus { state: TableState::Halted, snapshot: None, error: Some(why), copied_rows: None },
                );
                self.publish_tables(states);
                Ok(())
            }
            Err(CopyError::Primary(e)) => Err(Fail::Primary(format!("copying {table}: {e}"))),
            Err(CopyError::Replica(e)) => Err(Fail::Replica(format!("copying {table}: {e}"))),
        }
    }

    /// An operator adopts a halted table without a copy ([`tables::adopt_halted`]). Err:
    /// the answer for the operator, and how the session ends when the failure was not a
    /// refusal.
    async fn adopt(
        &self,
        primary: &mut Client,
        replica: &Client,
        table: &str,
        states: &mut BTreeMap<String, TableStatus>,
    ) -> Result<(), (String, Option<Fail>)> {
        let cfg = &self.config;
        let state = states.get(table).map(|s| s.state);
        let adopting = tables::adopt_halted(primary, replica, &cfg.origin, &cfg.replica_name, table, state);
        let snapshot = match tokio::time::timeout(cfg.deadline, adopting).await {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(tables::AdoptError::Refused(why))) => return Err((why, None)),
            Ok(Err(e @ tables::AdoptError::Primary(_))) => {
                let _ = primary.batch_execute("ROLLBACK").await;
                return Err((format!("adopting {table}: {e}"), Some(Fail::Primary(format!("adopting {table}: {e}")))));
            }
            Ok(Err(e @ tables::AdoptError::Replica(_))) => {
                return Err((format!("adopting {table}: {e}"), Some(Fail::Replica(format!("adopting {table}: {e}")))))
            }
            Err(_) => {
                // Which side hung is not known: start over on both.
                let e = format!("adopting {table} did not finish within {:?}", cfg.deadline);
                return Err((e.clone(), Some(Fail::Primary(e))));
            }
        };
        tracing::info!(replica = %cfg.replica_name, table = %table, %snapshot, "shipper: table adopted by an operator without a copy; its changes committed on the primary after this snapshot ship");
        states
            .insert(table.to_owned(), TableStatus { state: TableState::Copied, snapshot: Some(snapshot), error: None, copied_rows: None });
        self.publish_tables(states);
        Ok(())
    }

    fn publish_tables(&self, states: &BTreeMap<String, TableStatus>) {
        *self.stats.tables.lock().unwrap_or_else(|p| p.into_inner()) = states.clone();
    }

    /// Counts, logs and appends one conflict record.
    pub(super) fn conflict(&self, c: &Conflict) {
        super::conflicts::record(&self.stats, &self.config.replica_name, self.config.conflict_log.as_deref(), c);
    }

    /// A round trip on the primary session: it (and the lock it holds) is still there.
    async fn check_primary(&self, primary: &Client) -> Result<(), String> {
        self.timed("checking the primary session", primary.batch_execute("")).await
    }

    /// Records on the primary which snapshot this replica has applied (pruning and lag).
    async fn note_shipped(&self, primary: &Client, snapshot: &str) -> Result<(), String> {
        let sql = "INSERT INTO capgate.shipped_snapshots (replica, snapshot, at) VALUES ($1, $2::text::pg_snapshot, now()) \
                   ON CONFLICT (replica) DO UPDATE SET snapshot = EXCLUDED.snapshot, at = now()";
        self.timed("noting the shipped snapshot", primary.execute(sql, &[&self.config.replica_name, &snapshot])).await.map(|_| ())
    }

    /// Deletes changes every configured replica has applied, once older than the retention:
    /// a change whose transaction is older than every replica's snapshot `xmin` was either
    /// applied there or rolled back. A range committed in part keeps its changes: they are
    /// not visible in its start `A`, the snapshot noted until its last part commits.
    ///
    /// Only the changes before the first one that must stay are looked at (`seq` below `$3`,
    /// found by walking the primary key from its start to the first change inside the
    /// retention or not applied everywhere): both other conditions hold for nearly every row
    /// kept, so without that bound each prune read the whole retention (an hour of changes by
    /// default) to delete a minute of them — 836 ms against 23 ms at 2 million rows kept and
    /// 32,000 due (decision 0037). Nothing is read while some replica has applied nothing.
    async fn prune(&self, primary: &Client) -> Result<(), String> {
        let first_kept =
            "SELECT CASE WHEN (SELECT count(*) FROM capgate.shipped_snapshots WHERE replica = ANY ($1)) = cardinality($1::text[]) \
             THEN coalesce((SELECT seq FROM capgate.changes WHERE at >= now() - make_interval(secs => $2) \
                 OR xid >= (SELECT min(pg_snapshot_xmin(snapshot)) FROM capgate.shipped_snapshots WHERE replica = ANY ($1)) \
                 ORDER BY seq LIMIT 1), 9223372036854775807) END";
        let sql = "DELETE FROM capgate.changes WHERE seq < $3 \
                   AND xid < (SELECT min(pg_snapshot_xmin(snapshot)) FROM capgate.shipped_snapshots WHERE replica = ANY ($1)) \
                   AND (SELECT count(*) FROM capgate.shipped_snapshots WHERE replica = ANY ($1)) = cardinality($1::text[]) \
                   AND at < now() - make_interval(secs => $2)";
        let cfg = &self.config;
        let secs = cfg.retention.as_secs_f64();
        let row = self.timed("finding the changes due for pruning", primary.query_one(first_kept, &[&cfg.all_replicas, &secs])).await?;
        let Some(before) = row.try_get::<_, Option<i64>>(0).map_err(|e| e.to_string())? else { return Ok(()) };
        // A statement of its own each time, so it is planned with `$3` known: an index range.
        let n = self.timed("pruning shipped changes", primary.execute(sql, &[&cfg.all_replicas, &secs, &before])).await?;
        if n > 0 {
            tracing::debug!(origin = %cfg.origin, "shipper: pruned {n} shipped changes");
        }
        Ok(())
    }
}

//! The async shipper to a MySQL / MariaDB replica (decision 0021): one tokio task per
//! (origin, replica) that applies the primary's committed `capgate.changes` to the replica in
//! batches, exactly once, in `seq` order.
//!
//! - **Batches**: one consistent read of the changes the replica's position does not cover
//!   (`seq` above `high`, or one of the holes), applied in one replica transaction that also
//!   moves the position, fenced on its previous value ([`batch`]);
//! - **Holes** are looked for again in every batch, and dropped once every transaction that
//!   could still fill them has ended (`information_schema.INNODB_TRX`);
//! - **One shipper per pair** across capgate processes: `GET_LOCK` on the primary, held by
//!   the connection the shipper reads with;
//! - **Conflicts** are recorded with both images and the replica's row and resolved by the
//!   table's `on_conflict`; `halt` stops that table alone, its changes held until an operator
//!   resumes it ([`halt`]);
//! - **Tables entering** an async or bounded rule are copied at a consistent snapshot, then
//!   get only the changes the copy did not see ([`copy`], decision 0030);
//! - **Lag** ([`fleet`]) is computed from the primary alone, by every process.
//!
//! Shared with the PostgreSQL shipper: [`ShipperStats`], [`Phase`], [`Lag`], the conflict
//! record and log ([`super::conflicts`]).

mod batch;
mod copy;
mod ddl;
pub mod fleet;
pub mod halt;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::sync::Notify;

use super::{ConflictPolicy, Lag, Phase, ShipperStats, TableLag};
use crate::config::DbUrl;
use crate::replicate::apply::Conflict;
use crate::sites::{HealthView, State};
use crate::store::mysql::position::{Position, HOLE_SETTLE_SECS, MAX_HOLES};
use crate::store::mysql::xa::{self, ReplicaConn};
use crate::store::mysql::{apply, primary, ship};

pub use fleet::{LateFleet, MyFleet, MyLagMonitor};
pub use halt::MyShipper;

/// Everything one MySQL shipper needs.
#[derive(Clone)]
pub struct MyShipperConfig {
    /// This site's name: the origin recorded on the replica.
    pub origin: String,
    pub replica_name: String,
    pub primary: DbUrl,
    pub replica: DbUrl,
    /// Every replica of this origin: changes are pruned once all have applied them.
    pub all_replicas: Vec<String>,
    /// Most changes in one batch (one replica transaction).
    pub batch_rows: usize,
    /// About the most bytes of row images in one batch (at least one change is sent); the
    /// statement text must stay under the replica's `max_allowed_packet` (16 MiB by default).
    pub batch_bytes: usize,
    /// How often an idle shipper looks for new changes (a wake is faster).
    pub poll_interval: Duration,
    /// Least time from the read of one batch to the read of the next while the queue is
    /// drained (`ship_interval`, decision 0037): under a steady load each batch then carries
    /// what committed meanwhile and its fixed costs (a replica commit, the statements on both
    /// sides) are paid once for all of it. A full batch (a backlog) is followed at once.
    pub ship_interval: Duration,
    /// How often a shipper without the lock tries to take it.
    pub lock_poll: Duration,
    /// The replica's site takes writes of its own (`takes_writes`): a copy never empties its
    /// table (decision 0030; the replica's own capture triggers say so too).
    pub replica_takes_writes: bool,
    /// Upper bound on any one operation; a silent partition ends there.
    pub deadline: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long applied changes stay in `capgate.changes` before deletion.
    pub retention: Duration,
    pub prune_interval: Duration,
    pub conflict_log: Option<PathBuf>,
    pub on_conflict: ConflictPolicy,
    /// Whether the policy in force makes a table (`schema.table`) async or bounded: a change
    /// of such a table that the replica has not taken in waits for the table's copy, even
    /// when the capture triggers were not listed yet (decision 0030).
    pub copies: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// The replica's health: while it is partitioned no replica connection is held (the
    /// shipper waits for it to leave that state instead of timing out operation after
    /// operation). None: not watched.
    pub health: Option<HealthView>,
}

impl MyShipperConfig {
    /// Defaults: batches of up to 2,000 changes or 4 MiB of images, 30 s deadline, 1 h retention, `on_conflict =
    /// halt` for every table.
    pub fn new(origin: &str, replica_name: &str, primary: DbUrl, replica: DbUrl) -> MyShipperConfig {
        MyShipperConfig {
            origin: origin.to_owned(),
            replica_name: replica_name.to_owned(),
            primary,
            replica,
            all_replicas: vec![replica_name.to_owned()],
            batch_rows: 2000,
            batch_bytes: 4 << 20,
            poll_interval: Duration::from_millis(100),
            ship_interval: Duration::ZERO,
            lock_poll: Duration::from_secs(1),
            replica_takes_writes: false,
            deadline: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            prune_interval: Duration::from_secs(60),
            conflict_log: None,
            on_conflict: Arc::new(|_| crate::policy::DEFAULT_ON_CONFLICT),
            copies: Arc::new(|_| false),
            health: None,
        }
    }
}

/// Starts a MySQL shipper task on the current runtime.
pub fn start(config: MyShipperConfig) -> MyShipper {
    let stats = Arc::new(ShipperStats::default());
    let wake = Arc::new(Notify::new());
    let (commands, rx) = tokio::sync::mpsc::channel(16);
    let run = Run { config, stats: stats.clone(), wake: wake.clone(), commands: tokio::sync::Mutex::new(rx) };
    MyShipper { running: super::ShipperHandle::spawn(stats, wake, run.forever()), commands }
}

/// Why a leadership ended.
enum End {
    /// Something failed: retried after a backoff.
    Failed(String),
    /// The health loop saw the replica partitioned: wait for it to leave that state.
    Partitioned,
}

struct Run {
    config: MyShipperConfig,
    stats: Arc<ShipperStats>,
    wake: Arc<Notify>,
    /// Operators' resume requests, taken between batches.
    commands: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<halt::ResumeRequest>>,
}

impl Run {
    async fn forever(self) {
        let mut failures = 0u32;
        loop {
            if let Some(h) = self.partitioned() {
                self.stats.set_phase(Phase::Partitioned);
                while h.state() == State::Partitioned {
                    let left = h
                        .wait_for("the replica to leave the partitioned state", Duration::from_secs(60), |s| s.state != State::Partitioned);
                    if let Err(crate::sites::SiteError::Stopped { .. }) = left.await {
                        break;
                    }
                }
                failures = 0;
                tracing::info!(replica = %self.config.replica_name, "shipper: the replica is no longer partitioned; shipping again");
            }
            let end = tokio::select! {
                end = self.lead() => end,
                _ = until_partitioned(self.config.health.clone()) => End::Partitioned,
            };
            match end {
                End::Partitioned => {
                    self.stats.leader.store(false, Ordering::Relaxed);
                    tracing::warn!(replica = %self.config.replica_name, "shipper: the replica is partitioned; its connection is dropped until it heals");
                }
                End::Failed(e) => {
                    self.stats.leader.store(false, Ordering::Relaxed);
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(replica = %self.config.replica_name, origin = %self.config.origin, "shipper: {e}; retrying");
                    *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    failures = failures.saturating_add(1);
                    let factor = 1u32 << failures.min(16).saturating_sub(1);
                    let backoff = self.config.backoff_min.saturating_mul(factor).min(self.config.backoff_max);
                    // A partition seen meanwhile ends the wait: shipping resumes with the
                    // health view, not the backoff.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = until_partitioned(self.config.health.clone()) => {}
                    }
                }
            }
        }
    }

    /// The health view, when it says partitioned.
    fn partitioned(&self) -> Option<&HealthView> {
        self.config.health.as_ref().filter(|h| h.state() == State::Partitioned)
    }

    /// `fut` within the deadline, its error described by `what`.
    async fn timed<T, E: std::fmt::Display>(&self, what: &str, fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T, End> {
        match tokio::time::timeout(self.config.deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(End::Failed(format!("{what}: {e}"))),
            Err(_) => Err(End::Failed(format!("{what} did not finish within {:?}", self.config.deadline))),
        }
    }

    async fn lead(&self) -> End {
        match self.lead_inner().await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    /// One leadership: the primary, the lock, then one replica session until a failure.
    async fn lead_inner(&self) -> Result<std::convert::Infallible, End> {
        let cfg = &self.config;
        self.stats.set_phase(Phase::Connecting);
        let mut primary = self.timed("connecting to the primary", xa::connect(&cfg.primary)).await?;
        self.timed("installing the capgate database on the primary", primary::install(&mut primary)).await?;
        self.timed("preparing the primary session", ship::prepare_primary(&mut primary)).await?;
        let key = format!("capgate shipper {} -> {}", cfg.origin, cfg.replica_name);
        loop {
            let got: Option<Option<i64>> =
                self.timed("taking the shipper lock", primary.exec_first("SELECT GET_LOCK(?, 0)", (&key,))).await?;
            if got.flatten() == Some(1) {
                break;
            }
            self.stats.set_phase(Phase::Standby);
            tokio::time::sleep(cfg.lock_poll).await;
        }
        self.stats.leader.store(true, Ordering::Relaxed);
        self.stats.set_phase(Phase::ConnectingReplica);
        let mut replica = self.timed("connecting to the replica", ReplicaConn::connect(&cfg.replica, cfg.deadline)).await?;
        let rc = replica.conn();
        self.timed("installing capgate's functions on the replica", apply::install(rc)).await?;
        let mut pos = self.timed("reading the replica's position", ship::replica_position(rc, &cfg.origin)).await?;
        let mut entry = self.load_entry(&mut primary, &mut replica, &pos).await?;
        if pos == Position::default() {
            if let Some(start) = self.timed("finding the oldest change", ship::fresh_start(&mut primary)).await? {
                let advance = ship::advance_sql(&cfg.origin, &pos, &start);
                self.timed("recording where the replica starts", ship::commit_batch(replica.conn(), "", &advance)).await?;
                pos = start;
            }
        }
        let (mut tables, mut free) = self.timed("reading the replica's tables", ship::replica_catalog(replica.conn())).await?;
        let mut halted = self.load_halted(&mut primary, &mut replica, &entry).await?;
        self.note(&mut primary, &pos).await?;
        // The position last recorded on the primary: the one a batch reaches is recorded with
        // the next read ([`ship::read_batch`]), or at once when there is nothing left to read.
        let mut noted = pos.clone();
        self.stats.set_phase(Phase::Running);
        tracing::info!(replica = %cfg.replica_name, origin = %cfg.origin, high = pos.high, holes = pos.holes.len(), "shipper: holds the lock, shipping");
        let mut last_holes = Instant::now();
        let mut last_prune = Instant::now();
        // The last prune deleted a whole chunk: more are due at once.
        let mut prune_more = false;
        // The next batch, read on the primary while the replica applied the previous one, and
        // when its read began.
        let mut prefetched: Option<(ship::Batch, Instant)> = None;
        loop {
            self.take_requests(&mut primary, &mut replica, &mut halted, &mut tables, &mut entry, &pos).await?;
            // Tables entering replication are copied between two batches.
            let known = (entry.entered.len(), entry.refused.len());
            self.list_if_due(&mut primary, &mut replica, &mut entry).await?;
            if self.enter_tables(&mut primary, &mut replica, &mut entry, &pos).await? {
                (tables, free) = self.timed("reading the replica's tables", ship::replica_catalog(replica.conn())).await?;
                self.show(&halted, &entry);
            } else if known != (entry.entered.len(), entry.refused.len()) {
                self.show(&halted, &entry);
            }
            if !pos.holes.is_empty() && last_holes.elapsed().as_secs_f64() >= HOLE_SETTLE_SECS {
                last_holes = Instant::now();
                // Without the PROCESS privilege holes stay (shipping goes on; they are looked up).
                let settled = match self.timed("finding settled holes", ship::settled_holes(&mut primary, &pos)).await {
                    Ok(s) => s,
                    Err(End::Failed(e)) => {
                        tracing::warn!(replica = %cfg.replica_name, "shipper: {e}; holes are kept (grant PROCESS to capgate's account)");
                        Vec::new()
                    }
                    Err(end @ End::Partitioned) => return Err(end),
                };
                let mut pruned = pos.clone();
                if pruned.drop_holes(&settled) > 0 {
                    let advance = ship::advance_sql(&cfg.origin, &pos, &pruned);
                    self.timed("dropping settled holes", ship::commit_batch(replica.conn(), "", &advance)).await?;
                    pos = pruned;
                    self.note(&mut primary, &pos).await?;
                    noted = pos.clone();
                }
            }
            // Applied changes past the retention are deleted every `prune_interval`, a chunk
            // between two batches while more are due — whether or not the queue is drained: a
            // shipper that pruned only when a read came back empty never pruned under a steady
            // load, and one chunk a minute fell behind any load above 167 changes a second,
            // so `capgate.changes` grew without bound ([`ship::prune`] bounds what each chunk reads).
            if prune_more || last_prune.elapsed() >= cfg.prune_interval {
                last_prune = Instant::now();
                (_, prune_more) = self.timed("pruning", ship::prune(&mut primary, &cfg.all_replicas, cfg.retention.as_secs())).await?;
            }
            // A batch read before holes were dropped is still right: a dropped hole never shows up.
            let (mut read, read_began) = match prefetched.take() {
                Some(b) => b,
                None => {
                    let began = Instant::now();
                    let note = (noted != pos).then_some((cfg.replica_name.as_str(), &pos));
                    let b = self.timed("reading changes", ship::read_batch(&mut primary, note, &pos, cfg.batch_rows)).await?;
                    noted = pos.clone();
                    (b, began)
                }
            };
            // A full batch means a backlog: the next one is read at once. Otherwise the queue
            // was drained, and the next read waits out the rest of `ship_interval` from this
            // one's (decision 0037), so it carries what commits meanwhile.
            let read_rows = read.changes.len();
            read.truncate_to(cfg.batch_bytes);
            // A carried DDL statement is applied alone (decision 0040): the changes after it
            // are read again, at once.
            read.cut_at_ddl();
            let full = read_rows >= cfg.batch_rows || read.changes.len() < read_rows;
            let pause = if full { Duration::ZERO } else { cfg.ship_interval.saturating_sub(read_began.elapsed()) };
            if read.changes.is_empty() {
                if noted != pos {
                    self.note(&mut primary, &pos).await?;
                    noted = pos.clone();
                }
                let _ = tokio::time::timeout(cfg.poll_interval, self.wake.notified()).await;
                continue;
            }
            let seqs: Vec<u64> = read.changes.iter().map(|s| s.change.seq).collect();
            let next = pos.after(&seqs, read.seen);
            if next.holes.len() > MAX_HOLES && pos.holes.len() <= MAX_HOLES {
                tracing::warn!(replica = %cfg.replica_name, holes = next.holes.len(), "shipper: many numbers of capgate.changes are missing (auto_increment_increment above 1 on the primary?); each is looked up until it is dropped");
            }
            if entry.needs_listing(&read.changes) {
                self.list_for(&mut primary, &mut replica, &mut entry, &read.changes).await?;
            }
            // A halted table's changes are held on the primary: the position passes them; so
            // does it those of a table waiting for its copy (the copy will hold them), and those
            // a table's copy already held.
            let kept: Vec<ship::Shipped> =
                read.changes.iter().filter(|s| !halted.contains_key(&s.change.tbl) && entry.ships(s, &*cfg.copies)).cloned().collect();
            // Whether the batch has committed on the replica: a read after that records the
            // position it reached rather than the one before it (the primary's copy never runs
            // ahead of the replica's).
            let committed = std::sync::atomic::AtomicBool::new(false);
            // A committed batch is counted and its conflicts recorded at once, not after the
            // next read (which may wait for the interval).
            let applied = async {
                let outcome = batch::apply(replica.conn(), &cfg.origin, &kept, &mut tables, &mut free, &pos, &next, &cfg.on_conflict).await;
                if let Ok(batch::Outcome::Applied(conflicts)) = &outcome {
                    committed.store(true, Ordering::Relaxed);
                    self.applied(&read, conflicts);
                }
                outcome
            };
            // The next read overlaps this apply when the pause ends before the apply does.
            let prefetch = async {
                tokio::time::sleep(pause).await;
                let at = if committed.load(Ordering::Relaxed) { &next } else { &pos };
                let note = (noted != *at).then_some((cfg.replica_name.as_str(), at));
                let began = Instant::now();
                ship::read_batch(&mut primary, note, &next, cfg.batch_rows).await.map(|b| (b, began, at.clone()))
            };
            let (outcome, fetched) = match tokio::time::timeout(cfg.deadline + pause, async { tokio::join!(applied, prefetch) }).await {
                Ok(both) => both,
                Err(_) => return Err(End::Failed(format!("applying a batch did not finish within {:?}", cfg.deadline))),
            };
            let outcome = match outcome {
                Ok(o) => o,
                // The next session reads the replica's tables again (one may have been created).
                Err(e) => return Err(End::Failed(e.to_string())),
            };
            let (batch, began, recorded) = fetched.map_err(|e| End::Failed(e.to_string()))?;
            let fetched = (batch, began);
            noted = recorded;
            match outcome {
                batch::Outcome::Applied(_) => prefetched = Some(fetched),
                batch::Outcome::Halted(c) => {
                    // Nothing of the batch committed: halt that table, then apply the batch
                    // again without it.
                    super::conflicts::record(&self.stats, &cfg.replica_name, cfg.conflict_log.as_deref(), &c);
                    self.halt(&mut primary, &mut replica, &mut halted, &entry, &kept, &c).await?;
                    prefetched = Some((read, read_began));
                    continue;
                }
            }
            pos = next;
            entry.drop_passed(&pos);
            self.show_position(&pos);
        }
    }

    /// A batch committed on the replica: its conflicts and counts in the stats.
    fn applied(&self, read: &ship::Batch, conflicts: &[Conflict]) {
        for c in conflicts {
            super::conflicts::record(&self.stats, &self.config.replica_name, self.config.conflict_log.as_deref(), c);
        }
        self.stats.ranges.fetch_add(1, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.changes.fetch_add(read.changes.len() as u64, Ordering::Relaxed);
        let mut by_table = self.stats.changes_by_table.lock().unwrap_or_else(|p| p.into_inner());
        for s in &read.changes {
            *by_table.entry(s.change.tbl.clone()).or_insert(0) += 1;
        }
    }

    /// Records the position on the primary (lag and pruning read it) and in the stats.
    async fn note(&self, primary: &mut mysql_async::Conn, pos: &Position) -> Result<(), End> {
        self.timed("recording the shipped position", ship::note_shipped(primary, &self.config.replica_name, pos)).await?;
        self.show_position(pos);
        Ok(())
    }

    /// The position in the stats.
    fn show_position(&self, pos: &Position) {
        *self.stats.applied_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{} ({} holes)", pos.high, pos.holes.len()));
    }
}

/// Resolves once `health` says partitioned (never without a health view).
async fn until_partitioned(health: Option<HealthView>) {
    match health {
        Some(h) => h.until_partitioned().await,
        None => std::future::pending().await,
    }
}

/// A replica's [`Lag`] from its position and the pending changes per table.
pub fn lag_of(pos: &Position, pending: Vec<(String, u64, f64)>) -> Lag {
    let mut lag = Lag { measured: true, applied_snapshot: Some(pos.high.to_string()), ..Lag::default() };
    for (table, n, oldest) in pending {
        lag.pending_rows += n;
        lag.oldest_pending = Some(lag.oldest_pending.map_or(oldest, |o: f64| o.min(oldest)));
        lag.tables.insert(table, TableLag { pending_rows: n, oldest_pending: Some(oldest) });
    }
    lag
}

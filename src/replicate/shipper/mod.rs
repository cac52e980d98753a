//! The async shipper (decision 0009, "Async and bounded"): one tokio task per (origin,
//! replica) that applies the primary's committed row changes (`capgate.changes`) to the replica
//! by snapshot range, exactly once.
//!
//! - **Ranges**: a range is every change whose transaction is visible in the primary snapshot
//!   `B` (taken now) and not in `A` (the replica's `capgate.applied` snapshot). It is read
//!   through a cursor in pages of bounded size ([`range`]) and applied in replica
//!   transactions of about `part_changes` changes each, cut where no primary transaction
//!   spans the cut; each commits the replica's position (`capgate.advance`, fenced against a
//!   stale shipper): `B` and the last `seq` applied while the range is under way, then `A` =
//!   `B` (decision 0022). After any fault shipping goes on from there. The next page is read
//!   while the replica applies the current one (`apply_range`). `session` holds the task: leadership, the replica session, its loop.
//! - **One shipper per pair** across capgate processes: a session-level advisory lock on the
//!   primary, held by the connection the shipper reads with.
//! - **Tables** ([`tables`]): an async table is shipped only once it has been copied to the
//!   replica at a consistent point ([`copy`]); a change of it applies only if its transaction
//!   is not visible in the copy's snapshot. A table whose apply fails or halts stops alone
//!   (decision 0014); `resume` copies it again.
//! - **Partitions**: when the replica's health view says partitioned, the replica session is
//!   dropped at once; shipping resumes as soon as the view leaves that state.
//! - **Lag** ([`lag`]) is computed from the primary alone, so every capgate process can read
//!   it, not only the one that ships.

mod apply_range;
pub mod conflicts;
pub mod copy;
pub mod fleet;
pub mod lag;
pub mod mysql;
pub mod range;
mod session;
pub mod tables;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::backend::postgres::Upstream;
use crate::policy::OnConflict;
use crate::sites::{AbortOnDrop, HealthView};

pub use fleet::Fleet;
pub use lag::{Lag, LagMonitor, TableLag};
pub use tables::{TableState, TableStatus};

/// `on_conflict` of a table (`schema.table` as captured), decided by the policy current at
/// that moment (the lead wires this to the policy).
pub type ConflictPolicy = Arc<dyn Fn(&str) -> OnConflict + Send + Sync>;

/// Everything one shipper needs.
#[derive(Clone)]
pub struct ShipperConfig {
    /// This site's name: the origin recorded on the replica.
    pub origin: String,
    /// The replica's configured name, for logs, the lock key and `capgate.shipped_snapshots`.
    pub replica_name: String,
    pub primary: Upstream,
    pub replica: Upstream,
    /// Every replica this origin ships to: changes are pruned once all have applied them.
    pub all_replicas: Vec<String>,
    /// Most row changes sent to the replica in one round trip.
    pub page_rows: usize,
    /// About the most bytes of row images in one round trip (at least one change is sent).
    pub page_bytes: usize,
    /// A range is committed on the replica in parts of at least this many changes (a part
    /// ends at the first change after which no primary transaction spans the cut), so a
    /// fault loses at most the part under way (decision 0022).
    pub part_changes: usize,
    /// How often an idle shipper looks for new changes (a [`Shipper::wake`] is faster).
    pub poll_interval: Duration,
    /// Least time from the start of one range to the start of the next (`ship_interval`,
    /// decision 0037): under a steady load each range then carries what came in meanwhile,
    /// and its fixed costs (snapshot, WAL flushes, statements) are paid once for all of it.
    pub ship_interval: Duration,
    /// How often a shipper without the lock tries to take it.
    pub lock_poll: Duration,
    /// Upper bound on any one operation (connect, a page, a copy step); a silent partition
    /// the health loop has not yet noticed ends there.
    pub deadline: Duration,
    /// First and largest pause between reconnection attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long applied changes stay in `capgate.changes` (for inspection) before deletion.
    pub retention: Duration,
    pub prune_interval: Duration,
    /// Copy async tables to the replica before shipping their changes (tables not yet known
    /// to the replica's `capgate.tables`). Off only in tests that set up both sides alike.
    pub initial_copy: bool,
    /// The replica's site takes writes of its own (`takes_writes`): a table there that holds
    /// rows is never emptied by a copy (decision 0028), whether or not it carries capgate's
    /// capture trigger yet.
    pub replica_takes_writes: bool,
    /// A JSON-lines file each conflict is appended to.
    pub conflict_log: Option<PathBuf>,
    pub on_conflict: ConflictPolicy,
    /// The replica's health: while it says partitioned the shipper holds no replica
    /// connection. None: rely on the deadlines alone.
    pub health: Option<HealthView>,
}

impl ShipperConfig {
    /// Defaults: pages of up to 5,000 changes / 8 MiB, parts of 10,000 changes, 30 s deadline, 1 h retention, initial
    /// copies on, `on_conflict = halt` for every table.
    pub fn new(origin: &str, replica_name: &str, primary: Upstream, replica: Upstream) -> ShipperConfig {
        ShipperConfig {
            origin: origin.to_owned(),
            replica_name: replica_name.to_owned(),
            primary,
            replica,
            all_replicas: vec![replica_name.to_owned()],
            page_rows: 5000,
            page_bytes: 8 << 20,
            part_changes: 10_000,
            poll_interval: Duration::from_millis(100),
            ship_interval: Duration::ZERO,
            lock_poll: Duration::from_secs(1),
            deadline: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            prune_interval: Duration::from_secs(60),
            initial_copy: true,
            replica_takes_writes: false,
            conflict_log: None,
            on_conflict: Arc::new(|_| crate::policy::DEFAULT_ON_CONFLICT),
            health: None,
        }
    }

    /// The shipper of `config`'s site to its replica `replica` (defaults otherwise; the
    /// caller sets `on_conflict` from the policy and `health` from the sites). Fails when a
    /// URL's TLS settings cannot be loaded.
    pub fn for_replica(
        config: &crate::config::Config,
        replica: &crate::config::Replica,
    ) -> Result<ShipperConfig, crate::net::tls::TlsError> {
        let primary = Upstream::new(config.primary.url.clone())?;
        let upstream = Upstream::new(replica.url.clone())?;
        let mut c = ShipperConfig::new(&config.site, &replica.name, primary, upstream);
        c.all_replicas = config.replicas.iter().map(|r| r.name.clone()).collect();
        c.conflict_log = config.conflict_log.clone();
        c.replica_takes_writes = replica.takes_writes;
        c.ship_interval = replica.ship_interval;
        Ok(c)
    }
}

/// What a shipper has done; read by tests, `/status` and metrics.
#[derive(Debug, Default)]
pub struct ShipperStats {
    /// Ranges applied completely on the replica.
    pub ranges: AtomicU64,
    /// Replica transactions that committed changes of a range (a range commits in one part
    /// or more).
    pub parts: AtomicU64,
    /// Replica round trips that carried row changes.
    pub batches: AtomicU64,
    /// Row changes applied (including resolved conflicts).
    pub changes: AtomicU64,
    pub conflicts: AtomicU64,
    /// Sessions that failed and were retried.
    pub retries: AtomicU64,
    /// Whether this shipper holds the advisory lock (is the one shipping).
    pub leader: AtomicBool,
    /// The replica's applied snapshot as last read or written.
    pub applied_snapshot: Mutex<Option<String>>,
    pub last_error: Mutex<Option<String>>,
    /// What the shipper is doing now (a [`Phase`]; read it with [`ShipperStats::phase`]).
    pub phase: AtomicU8,
    /// Conflicts by (table, kind).
    pub conflicts_by_table: Mutex<BTreeMap<(String, String), u64>>,
    /// Row changes applied, by table.
    pub changes_by_table: Mutex<BTreeMap<String, u64>>,
    /// Every table the replica knows for this origin: copying, copied, halted (with the
    /// exact error), as last read or written.
    pub tables: Mutex<BTreeMap<String, TableStatus>>,
    /// The table being copied now and the rows copied so far (read by [`ShipperStats::tables`]).
    pub copying: Mutex<Option<(String, Arc<AtomicU64>)>>,
}

/// What a shipper is doing, for status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting to the primary (or installing the schema there).
    Connecting = 0,
    /// Connected; another shipper (another capgate process) holds the lock.
    Standby = 1,
    /// Holds the lock; connecting to the replica.
    ConnectingReplica = 2,
    /// Shipping (or idle and caught up).
    Running = 3,
    /// Copying a table to the replica.
    Copying = 4,
    /// The replica's health view says partitioned: no replica connection is held.
    Partitioned = 5,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Standby => "standby",
            Phase::ConnectingReplica => "connecting to the replica",
            Phase::Running => "running",
            Phase::Copying => "copying",
            Phase::Partitioned => "partitioned",
        }
    }
}

impl ShipperStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn applied_snapshot(&self) -> Option<String> {
        self.applied_snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Standby,
            2 => Phase::ConnectingReplica,
            3 => Phase::Running,
            4 => Phase::Copying,
            5 => Phase::Partitioned,
            _ => Phase::Connecting,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Conflicts by (table, kind) so far.
    pub fn conflicts_by_table(&self) -> BTreeMap<(String, String), u64> {
        self.conflicts_by_table.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The tables the replica knows for this origin (a table being copied shows the rows
    /// copied so far).
    pub fn tables(&self) -> BTreeMap<String, TableStatus> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((table, rows)) = self.copying.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if let Some(t) = tables.get_mut(table) {
                t.copied_rows = Some(rows.load(Ordering::Relaxed));
            }
        }
        tables
    }

    /// The halted tables and why.
    pub fn halted(&self) -> BTreeMap<String, String> {
        self.tables()
            .into_iter()
            .filter_map(|(t, s)| match s.state {
                TableState::Halted => Some((t, s.error.unwrap_or_default())),
                _ => None,
            })
            .collect()
    }
}

/// An operator's request to a running shipper.
#[derive(Debug)]
pub(crate) enum Command {
    /// Forget the table's state on the replica so it is copied again and shipped; or, with
    /// `adopt`, record the halted table as in replication at a primary snapshot taken now,
    /// without a copy (decision 0028).
    Resume { table: String, adopt: bool, done: tokio::sync::oneshot::Sender<Result<(), String>> },
}

/// What every running shipper (PostgreSQL's and MySQL's) gives its owner: its counters, a
/// way to wake it, and its task, stopped (wherever it is) when this is dropped. (Lag is not
/// here: a lag monitor measures it for every process in front of the primary.)
pub struct ShipperHandle {
    stats: Arc<ShipperStats>,
    wake: Arc<Notify>,
    _task: AbortOnDrop<()>,
}

impl ShipperHandle {
    /// Spawns `task` on the current runtime; it reports to `stats`, publishes its lag on the
    /// sender of `lag` and waits on `wake` between rounds.
    pub(crate) fn spawn(
        stats: Arc<ShipperStats>,
        wake: Arc<Notify>,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> ShipperHandle {
        ShipperHandle { stats, wake, _task: AbortOnDrop(tokio::spawn(task)) }
    }

    pub fn stats(&self) -> &Arc<ShipperStats> {
        &self.stats
    }

    /// Look for new changes now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A running PostgreSQL shipper, which also takes operator requests; stops when dropped.
pub struct Shipper {
    running: ShipperHandle,
    commands: mpsc::Sender<Command>,
}

impl std::ops::Deref for Shipper {
    type Target = ShipperHandle;

    fn deref(&self) -> &ShipperHandle {
        &self.running
    }
}

impl Shipper {
    /// Starts the shipper task on the current runtime. It installs the schemas on both
    /// sides, waits for the lock and ships.
    pub fn start(config: ShipperConfig) -> Shipper {
        let stats = Arc::new(ShipperStats::default());
        let wake = Arc::new(Notify::new());
        let (commands, rx) = mpsc::channel(16);
        let run = session::Run::new(config, stats.clone(), wake.clone(), rx);
        Shipper { running: ShipperHandle::spawn(stats, wake, run.forever()), commands }
    }

    /// Resumes a halted (or refused) table: its state on the replica is forgotten, so it is
    /// copied again from the primary and shipped from there. Answers once the replica has
    /// forgotten it (the copy follows), or with why not (this process does not ship to the
    /// replica, the replica cannot be reached).
    pub async fn resume(&self, table: &str, timeout: Duration) -> Result<(), String> {
        self.request(table, false, timeout).await
    }

    /// Adopts a halted table without copying it (decision 0028): the operator has made it
    /// equal on both sites; the replica records it as in replication at a primary snapshot
    /// taken now, so every change committed on the primary after that snapshot ships, once,
    /// and none before it. Refused for a table being copied or already copied, or not
    /// captured as async on the primary; a table the replica does not know yet is adopted.
    pub async fn adopt(&self, table: &str, timeout: Duration) -> Result<(), String> {
        self.request(table, true, timeout).await
    }

    async fn request(&self, table: &str, adopt: bool, timeout: Duration) -> Result<(), String> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let sent = self.commands.send(Command::Resume { table: table.to_owned(), adopt, done });
        match tokio::time::timeout(timeout, async {
            sent.await.map_err(|_| "the shipper has stopped".to_owned())?;
            rx.await.map_err(|_| "the shipper has stopped".to_owned())?
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the shipper did not take the request within {timeout:?} (it may be connecting, copying or not the one shipping)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_being_copied_shows_its_rows_so_far_and_halted_tables_their_error() {
        let stats = ShipperStats::default();
        let copying = TableStatus { state: TableState::Copying, snapshot: None, error: None, copied_rows: Some(0) };
        let halted = TableStatus { state: TableState::Halted, snapshot: None, error: Some("no such table".into()), copied_rows: None };
        *stats.tables.lock().unwrap() = BTreeMap::from([("public.a".to_owned(), copying), ("public.b".to_owned(), halted)]);
        let rows = Arc::new(AtomicU64::new(0));
        *stats.copying.lock().unwrap() = Some(("public.a".into(), rows.clone()));
        rows.store(1234, Ordering::Relaxed);
        assert_eq!(stats.tables()["public.a"].copied_rows, Some(1234));
        assert_eq!(stats.halted(), BTreeMap::from([("public.b".to_owned(), "no such table".to_owned())]));
    }
}

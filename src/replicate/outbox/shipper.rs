//! The shipper: one tokio task per (origin, replica) that applies the primary's outbox to
//! the replica in commit order, in batches, exactly once.
//!
//! - **One shipper per pair** across capgate processes: a session-level advisory lock on the
//!   primary, held by the connection the shipper reads the outbox with. If the holder dies
//!   its connection closes, the lock goes with it, and a waiting shipper takes over.
//! - **Exactly once**: the batch and the watermark `capgate.applied(origin, seq)` commit in
//!   one replica transaction; every session starts from the replica's watermark. The
//!   watermark moves only from the value read (`capgate.advance`), which also fences off a
//!   stale shipper that still believes it holds the lock.
//! - **One round trip per batch** (see `apply`), up to `max_statements` / `max_bytes`, never
//!   splitting a primary transaction.
//! - **Conflicts**: recorded on the replica in `capgate.conflicts` (and appended to
//!   `conflict_log`); `skip` goes on, `halt` stops shipping for the origin until the shipper
//!   is restarted (it keeps the lock and keeps measuring lag), `overwrite` is NOT implemented
//!   yet and behaves as `skip` with the resolution saying so. TODO(overwrite): turn INSERTs
//!   on tables with a key into upserts.
//! - **Failures**: anything failing on the replica ends the replica session (the connection
//!   is dropped, whatever it was doing) and a new one starts after a backoff; a failure on the
//!   primary ends the leadership too. Every wait has a deadline.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_postgres::Client;

use super::apply::{self, Outcome, TypeNames};
use super::lag::{self, Lag};
use super::schema;
use crate::backend::postgres::Upstream;
use crate::policy::OnConflict;
use crate::sites::AbortOnDrop;

/// The `application_name` of the shipper's connections.
const APPLICATION_NAME: &str = "capgate shipper";

/// Decides `on_conflict` for a statement from the tables it writes (the lead wires this to
/// the policy: the strictest of the tables' settings).
pub type ConflictPolicy = Arc<dyn Fn(&[String]) -> OnConflict + Send + Sync>;

/// Everything one shipper needs.
#[derive(Clone)]
pub struct ShipperConfig {
    /// This site's name: the outbox rows it ships and the replica's watermark key.
    pub origin: String,
    /// The replica's configured name, for logs, the lock key and pruning.
    pub replica_name: String,
    pub primary: Upstream,
    pub replica: Upstream,
    /// Every replica this origin ships to: rows are pruned only once all have applied them.
    pub all_replicas: Vec<String>,
    /// Most statements in one batch.
    pub max_statements: usize,
    /// About the most bytes (statements and values) in one batch.
    pub max_bytes: usize,
    /// How often an idle shipper looks for new rows (a [`Shipper::wake`] is faster).
    pub poll_interval: Duration,
    /// How often a shipper without the lock tries to take it.
    pub lock_poll: Duration,
    /// Upper bound on any one operation (connect, a batch); a silent partition ends there.
    pub deadline: Duration,
    /// First and largest pause between reconnection attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long applied rows stay in the outbox (for inspection) before they are deleted.
    pub retention: Duration,
    pub prune_interval: Duration,
    /// Least time between two lag measurements while there is a backlog.
    pub lag_interval: Duration,
    /// A JSON-lines file each conflict is appended to.
    pub conflict_log: Option<PathBuf>,
    pub on_conflict: ConflictPolicy,
}

impl ShipperConfig {
    /// Defaults: batches of up to 1,000 statements / 4 MiB, 30 s deadline, 1 h retention,
    /// `on_conflict = halt` for every table.
    pub fn new(origin: &str, replica_name: &str, primary: Upstream, replica: Upstream) -> ShipperConfig {
        ShipperConfig {
            origin: origin.to_owned(),
            replica_name: replica_name.to_owned(),
            primary,
            replica,
            all_replicas: vec![replica_name.to_owned()],
            max_statements: 1000,
            max_bytes: 4 << 20,
            poll_interval: Duration::from_millis(100),
            lock_poll: Duration::from_secs(1),
            deadline: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            prune_interval: Duration::from_secs(60),
            lag_interval: Duration::from_millis(250),
            conflict_log: None,
            on_conflict: Arc::new(|_| crate::policy::DEFAULT_ON_CONFLICT),
        }
    }
}

impl ShipperConfig {
    /// The shipper of `config`'s site to its replica `replica` (defaults otherwise; the
    /// caller sets `on_conflict` from the policy). Fails when a URL's TLS settings cannot be
    /// loaded.
    pub fn for_replica(
        config: &crate::config::Config,
        replica: &crate::config::Replica,
    ) -> Result<ShipperConfig, crate::net::tls::TlsError> {
        let primary = Upstream::new(config.primary.url.clone())?;
        let upstream = Upstream::new(replica.url.clone())?;
        let mut c = ShipperConfig::new(&config.site, &replica.name, primary, upstream);
        c.all_replicas = config.replicas.iter().map(|r| r.name.clone()).collect();
        Ok(c)
    }
}

/// What a shipper has done; read by tests, status and metrics.
#[derive(Debug, Default)]
pub struct ShipperStats {
    /// Batches committed on the replica (each one round trip).
    pub batches: AtomicU64,
    /// Outbox rows applied (including skipped conflicts).
    pub statements: AtomicU64,
    /// Primary transactions applied.
    pub transactions: AtomicU64,
    pub conflicts: AtomicU64,
    /// Sessions that failed and were retried.
    pub retries: AtomicU64,
    /// Whether this shipper holds the advisory lock (is the one shipping).
    pub leader: AtomicBool,
    /// The replica's watermark as last read or written.
    pub applied_seq: AtomicI64,
    /// Set when a `halt` conflict stopped shipping: what happened.
    pub halted: Mutex<Option<String>>,
    pub last_error: Mutex<Option<String>>,
    /// What the shipper is doing now (a [`Phase`]; read it with [`ShipperStats::phase`]).
    pub phase: AtomicU8,
    /// Conflicts by (table, kind): kind is `row_count` (the replica affected a different
    /// number of rows) or `error` (the statement failed on the replica). A statement writing
    /// two tables counts under both.
    pub conflicts_by_table: Mutex<BTreeMap<(String, String), u64>>,
}

/// What a shipper is doing, for status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting to the primary (or installing the outbox there).
    Connecting = 0,
    /// Connected; another shipper (another capgate process) holds the lock.
    Standby = 1,
    /// Holds the lock; connecting to the replica.
    ConnectingReplica = 2,
    /// Shipping (or idle and caught up).
    Running = 3,
    /// A `halt` conflict stopped it.
    Halted = 4,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Standby => "standby",
            Phase::ConnectingReplica => "connecting to the replica",
            Phase::Running => "running",
            Phase::Halted => "halted",
        }
    }
}

impl ShipperStats {
    pub fn halted(&self) -> Option<String> {
        self.halted.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Standby,
            2 => Phase::ConnectingReplica,
            3 => Phase::Running,
            4 => Phase::Halted,
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
}

/// A running shipper; stops (wherever it is) when dropped.
pub struct Shipper {
    stats: Arc<ShipperStats>,
    lag: watch::Receiver<Lag>,
    wake: Arc<Notify>,
    _task: AbortOnDrop<()>,
}

impl Shipper {
    /// Starts the shipper task on the current runtime. It installs the schema on both sides,
    /// waits for the lock and ships.
    pub fn start(config: ShipperConfig) -> Shipper {
        let stats = Arc::new(ShipperStats::default());
        let (lag_tx, lag) = watch::channel(Lag::default());
        let wake = Arc::new(Notify::new());
        let run = Run { config, stats: stats.clone(), lag: lag_tx, wake: wake.clone() };
        Shipper { stats, lag, wake, _task: AbortOnDrop(tokio::spawn(run.forever())) }
    }

    pub fn stats(&self) -> &Arc<ShipperStats> {
        &self.stats
    }

    /// The latest lag (cheap: no query).
    pub fn lag(&self) -> watch::Receiver<Lag> {
        self.lag.clone()
    }

    /// Look for new rows now (the relay calls this after committing captured writes).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Why a session ended.
enum Fail {
    /// The primary (or the lock) is gone: give up leadership.
    Primary(String),
    /// The replica failed: reconnect to it, keep the lock.
    Replica(String),
}

/// The task's state.
struct Run {
    config: ShipperConfig,
    stats: Arc<ShipperStats>,
    lag: watch::Sender<Lag>,
    wake: Arc<Notify>,
}

/// A connected client whose connection task ends with it.
struct Conn {
    client: Client,
    _task: AbortOnDrop<()>,
}

impl Run {
    async fn forever(self) {
        let mut failures = 0u32;
        loop {
            let (Fail::Primary(e) | Fail::Replica(e)) = self.lead().await;
            self.stats.leader.store(false, Ordering::Relaxed);
            self.failed(&e);
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

    async fn timed<T, E: std::fmt::Display>(&self, what: &str, fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
        match tokio::time::timeout(self.config.deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what} did not finish within {:?}", self.config.deadline)),
        }
    }

    async fn connect(&self, upstream: &Upstream, what: &str) -> Result<Conn, String> {
        let (client, task) = self.timed(what, upstream.client_with_task(APPLICATION_NAME)).await?;
        Ok(Conn { client, _task: AbortOnDrop(task) })
    }

    /// One leadership: connect to the primary, take the lock, ship until something fails.
    async fn lead(&self) -> Fail {
        self.stats.set_phase(Phase::Connecting);
        let primary = match self.connect(&self.config.primary, "connecting to the primary").await {
            Ok(c) => c,
            Err(e) => return Fail::Primary(e),
        };
        if let Err(e) = self.timed("installing the outbox on the primary", schema::install_primary(&primary.client)).await {
            return Fail::Primary(e);
        }
        let key = format!("capgate shipper {} -> {}", self.config.origin, self.config.replica_name);
        loop {
            let locked = self
                .timed("taking the shipper lock", primary.client.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&key]))
                .await
                .and_then(|r| r.try_get::<_, bool>(0).map_err(|e| e.to_string()));
            match locked {
                Ok(true) => break,
                Ok(false) => {
                    self.stats.set_phase(Phase::Standby);
                    tokio::time::sleep(self.config.lock_poll).await
                }
                Err(e) => return Fail::Primary(e),
            }
        }
        self.stats.leader.store(true, Ordering::Relaxed);
        self.stats.set_phase(Phase::ConnectingReplica);
        tracing::info!(replica = %self.config.replica_name, origin = %self.config.origin, "shipper: holds the lock, shipping");
        let mut failures = 0u32;
        loop {
            match self.ship(&primary.client).await {
                Fail::Primary(e) => return Fail::Primary(e),
                Fail::Replica(e) => {
                    self.stats.set_phase(Phase::ConnectingReplica);
                    self.failed(&e);
                    failures = failures.saturating_add(1);
                    if let Err(e) = self.measure_lag(&primary.client).await {
                        return Fail::Primary(e);
                    }
                    tokio::time::sleep(self.backoff(failures)).await;
                }
            }
        }
    }

    /// One replica session: ship batches until a failure or a halt (then idle, measuring
    /// lag, until the primary fails: a halted shipper keeps its lock so nobody else ships).
    async fn ship(&self, primary: &Client) -> Fail {
        let cfg = &self.config;
        let replica = match self.connect(&cfg.replica, "connecting to the replica").await {
            Ok(c) => c,
            Err(e) => return Fail::Replica(e),
        };
        if let Err(e) = self.timed("installing the capgate schema on the replica", schema::install_replica(&replica.client)).await {
            return Fail::Replica(e);
        }
        let origin = cfg.origin.as_str();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&origin];
        let read = replica.client.query_opt("SELECT seq FROM capgate.applied WHERE origin = $1", &params);
        let mut watermark: i64 = match self.timed("reading the watermark", read).await {
            Ok(row) => row.and_then(|r| r.try_get(0).ok()).unwrap_or(0),
            Err(e) => return Fail::Replica(e),
        };
        self.stats.applied_seq.store(watermark, Ordering::Relaxed);
        if let Err(e) = self.note_shipped(primary, watermark).await {
            return Fail::Primary(e);
        }
        if self.stats.halted().is_some() {
            return self.idle_halted(primary).await;
        }
        self.stats.set_phase(Phase::Running);
        let mut names = TypeNames::default();
        let mut last_lag = Instant::now() - cfg.lag_interval;
        let mut last_prune = Instant::now();
        loop {
            let fetched = apply::fetch(primary, &cfg.origin, watermark, cfg.max_statements, cfg.max_bytes);
            let rows = match self.timed("reading the outbox", fetched).await {
                Ok(rows) => rows,
                Err(e) => return Fail::Primary(e),
            };
            if last_prune.elapsed() >= cfg.prune_interval {
                last_prune = Instant::now();
                if let Err(e) = self.prune(primary).await {
                    return Fail::Primary(e);
                }
            }
            if rows.is_empty() {
                self.lag.send_replace(Lag::caught_up(watermark));
                let _ = tokio::time::timeout(cfg.poll_interval, self.wake.notified()).await;
                continue;
            }
            if last_lag.elapsed() >= cfg.lag_interval {
                last_lag = Instant::now();
                if let Err(e) = self.measure_lag(primary).await {
                    return Fail::Primary(e);
                }
            }
            if let Err(e) = self.timed("resolving parameter types", names.resolve(primary, &rows)).await {
                return Fail::Primary(e);
            }
            let policy = cfg.on_conflict.clone();
            let sql = apply::batch_sql(&cfg.origin, watermark, &rows, &names, &*policy);
            let outcome = match self.timed("applying a batch", apply::apply(&replica.client, &sql)).await {
                Ok(o) => o,
                Err(e) => return Fail::Replica(e),
            };
            match outcome {
                Outcome::Applied { conflicts } => {
                    watermark = rows.last().map_or(watermark, |r| r.seq);
                    self.count(&rows, rows.len());
                    for c in conflicts {
                        self.conflict(c);
                    }
                }
                Outcome::Halt { seq, id, detail } => {
                    let batch = apply::Batch { origin: &cfg.origin, from: watermark, rows: &rows, names: &names, policy: &*policy };
                    let done = apply::apply_halted(&replica.client, batch, id, &detail);
                    let (new_watermark, record) = match self.timed("recording a halting conflict", done).await {
                        Ok(x) => x,
                        Err(e) => return Fail::Replica(e),
                    };
                    let applied = rows.iter().filter(|r| r.seq <= new_watermark).count();
                    watermark = new_watermark;
                    self.count(&rows[..applied], applied);
                    let why = format!(
                        "halted at origin {} seq {seq} (outbox id {id}): {}; resolve it on replica `{}` and restart the shipper",
                        cfg.origin,
                        record.get("error").and_then(|v| v.as_str()).unwrap_or("conflict"),
                        cfg.replica_name
                    );
                    self.conflict(record);
                    tracing::error!(replica = %cfg.replica_name, "shipper: {why}");
                    *self.stats.halted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
            self.stats.applied_seq.store(watermark, Ordering::Relaxed);
            if let Err(e) = self.note_shipped(primary, watermark).await {
                return Fail::Primary(e);
            }
            if self.stats.halted().is_some() {
                return self.idle_halted(primary).await;
            }
        }
    }

    fn count(&self, rows: &[apply::Row], statements: usize) {
        let mut seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        seqs.dedup();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.statements.fetch_add(statements as u64, Ordering::Relaxed);
        self.stats.transactions.fetch_add(seqs.len() as u64, Ordering::Relaxed);
    }

    /// Halted: keep the lock, keep the lag current, ship nothing.
    async fn idle_halted(&self, primary: &Client) -> Fail {
        self.stats.set_phase(Phase::Halted);
        loop {
            if let Err(e) = self.measure_lag(primary).await {
                return Fail::Primary(e);
            }
            tokio::time::sleep(self.config.lock_poll).await;
        }
    }

    /// Counts, logs and appends one conflict record.
    fn conflict(&self, mut record: serde_json::Value) {
        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
        {
            let kind = match record.get("sqlstate").and_then(|v| v.as_str()) {
                Some("CGR01") => "row_count",
                _ => "error",
            };
            let tables: Vec<String> = record
                .get("tables")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let mut by = self.stats.conflicts_by_table.lock().unwrap_or_else(|p| p.into_inner());
            for table in if tables.is_empty() { vec![String::new()] } else { tables } {
                *by.entry((table, kind.to_owned())).or_insert(0) += 1;
            }
        }
        if let Some(obj) = record.as_object_mut() {
            obj.insert("replica".into(), self.config.replica_name.clone().into());
            obj.insert("at".into(), chrono_free_now().into());
        }
        tracing::warn!(replica = %self.config.replica_name, "shipper: conflict: {record}");
        if let Some(path) = &self.config.conflict_log {
            let written = std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| writeln!(f, "{record}"));
            if let Err(e) = written {
                tracing::error!("shipper: cannot append to the conflict log {}: {e}", path.display());
            }
        }
    }

    async fn measure_lag(&self, primary: &Client) -> Result<(), String> {
        let applied = self.stats.applied_seq.load(Ordering::Relaxed);
        let lag = self.timed("measuring lag", lag::measure(primary, &self.config.origin, applied)).await?;
        self.lag.send_replace(lag);
        Ok(())
    }

    /// Records on the primary how far this replica is, for pruning.
    async fn note_shipped(&self, primary: &Client, seq: i64) -> Result<(), String> {
        let sql = "INSERT INTO capgate.shipped (origin, replica, seq) VALUES ($1, $2, $3) \
                   ON CONFLICT (origin, replica) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now()";
        let cfg = &self.config;
        self.timed("noting the shipped seq", primary.execute(sql, &[&cfg.origin, &cfg.replica_name, &seq])).await.map(|_| ())
    }

    /// Deletes rows every replica of the origin has applied, once older than the retention.
    async fn prune(&self, primary: &Client) -> Result<(), String> {
        let sql = "DELETE FROM capgate.outbox WHERE origin = $1 AND seq IS NOT NULL \
                   AND seq <= (SELECT min(seq) FROM capgate.shipped WHERE origin = $1 AND replica = ANY ($2)) \
                   AND (SELECT count(*) FROM capgate.shipped WHERE origin = $1 AND replica = ANY ($2)) = cardinality($2::text[]) \
                   AND committed_at < now() - make_interval(secs => $3)";
        let cfg = &self.config;
        let secs = cfg.retention.as_secs_f64();
        let n = self.timed("pruning the outbox", primary.execute(sql, &[&cfg.origin, &cfg.all_replicas, &secs])).await?;
        if n > 0 {
            tracing::debug!(origin = %cfg.origin, "shipper: pruned {n} shipped outbox rows");
        }
        Ok(())
    }
}

/// Unix seconds, for the conflict log line.
fn chrono_free_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

//! The sync commit of a MySQL session over XA (decision 0016): performs the actions of
//! [`SyncCommit`] — the protocol-neutral state machine, used unchanged — on the session's
//! primary transaction and on the replicas.
//!
//! The primary side is a small trait ([`PrimaryTx`]): the relay implements it on the client's
//! own connection at a held COMMIT, and tests implement it on a driver connection. The replica
//! side is one [`ReplicaSlot`] per replica and session: capgate's own connections, marked as
//! apply sessions. A commit takes one, prepares its branch on it, and the [`PreparedBranch`]
//! goes to the task that sends `XA COMMIT` off the client's critical path, which gives the
//! connection back. The session's next commit does not wait for that round trip: it prepares
//! on another connection of the slot (a second one is opened the first time it is needed).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::warn;

use crate::config::DbUrl;
use crate::policy::Policy;
use crate::replicate::coordinator::strictest_on_partition;
use crate::replicate::coordinator::{Action, Event, PrepareFailure, ReplicaView, SyncCommit};
use crate::replicate::Refusal;
use crate::sites::HealthView;
use crate::store::mysql::apply::{self, ApplyError, Change, Tables};
use crate::store::mysql::capture;
use crate::store::mysql::replica_setup::ReplicaSetup;
use crate::store::mysql::xa::{PreparedBranch, ReplicaConn};

/// The primary transaction a sync commit decides, as the coordinator needs it.
pub trait PrimaryTx {
    /// Read and remove the transaction's sync changes, writing decision record `gid` inside
    /// the transaction when there are any (`store::mysql::primary::SYNC_READ` and the two
    /// statements after it). The error text, when the primary could not.
    fn read_changes(&mut self, gid: &str, origin: &str) -> impl Future<Output = Result<Vec<Change>, String>> + Send;
    /// Let the client's COMMIT reach the primary: whether the transaction committed, or
    /// None when nobody can tell (the connection failed after the COMMIT was sent: the
    /// primary may have committed, decision record and all).
    fn commit(&mut self) -> impl Future<Output = Option<bool>> + Send;
    /// Roll the transaction back: the commit was refused.
    fn rollback(&mut self) -> impl Future<Output = ()> + Send;
}

/// One replica as one session's sync commits use it.
pub struct ReplicaSlot {
    pub name: String,
    url: DbUrl,
    /// The replica's health loop (None: not watched, every commit tries the replica).
    health: Option<HealthView>,
    /// Whether capgate's functions are on the replica (decision 0038). A watched replica
    /// that is not set up is not offered a commit (its health loop sets it up); an unwatched
    /// one is set up by the commit's new connection. None: assumed set up.
    setup: Option<Arc<ReplicaSetup>>,
    state: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// Connections that hold no branch. A commit takes one (or opens one when every
    /// connection is still busy with an earlier commit's `XA COMMIT`); its `XA COMMIT`
    /// gives it back. At most [`IDLE_CONNECTIONS`] are kept.
    idle: Vec<ReplicaConn>,
    /// The replica's tables, read when first needed and again when a change names a table
    /// or column not in them.
    tables: Option<Tables>,
}

/// How many branch-free connections a slot keeps: one session commits one transaction at a
/// time, so one connection prepares while at most one other finishes the previous commit.
const IDLE_CONNECTIONS: usize = 2;

impl ReplicaSlot {
    pub fn new(name: String, url: DbUrl) -> ReplicaSlot {
        ReplicaSlot { name, url, health: None, setup: None, state: tokio::sync::Mutex::new(Slot::default()) }
    }

    /// The same, admitted by the replica's health: a partitioned or healing replica is not
    /// offered a commit; the tables' `on_partition` decides (refuse at once, or wait).
    pub fn watched(name: String, url: DbUrl, health: HealthView) -> ReplicaSlot {
        ReplicaSlot { health: Some(health), ..ReplicaSlot::new(name, url) }
    }

    /// The same, set up by `setup` (from its health loop's connection, or the start).
    pub fn with_setup(self, setup: Arc<ReplicaSetup>) -> ReplicaSlot {
        ReplicaSlot { setup: Some(setup), ..self }
    }

    /// Whether a commit may go to the replica now, and its state for messages.
    pub fn availability(&self) -> (bool, String) {
        let v = self.view();
        (v.available, v.state)
    }

    /// The replica's URL.
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// Whether a commit may go to the replica now, and its state for messages.
    fn view(&self) -> ReplicaView {
        let Some(health) = &self.health else {
            return ReplicaView { name: self.name.clone(), available: true, state: "not watched".into() };
        };
        let s = health.status();
        let state = match &s.last_error {
            Some(e) => format!("{} ({e})", s.state),
            None => s.state.to_string(),
        };
        match &self.setup {
            // Between the start and the health loop's first connection: the replica did not
            // answer at start, and nothing has installed capgate's functions there since.
            Some(setup) if s.state.is_available() && !setup.installed() => {
                ReplicaView { name: self.name.clone(), available: false, state: format!("not set up ({})", setup.why_not()) }
            }
            _ => ReplicaView { name: self.name.clone(), available: s.state.is_available(), state },
        }
    }
}

/// What every session of a listener shares for sync commits: the replicas, and the gids.
pub struct SyncShared {
    /// Name and URL, per replica.
    replicas: Vec<(String, DbUrl)>,
    /// Each replica's health, in the same order (empty: not watched).
    health: Vec<HealthView>,
    /// Each replica's setup, in the same order (decision 0038).
    setups: Vec<Arc<ReplicaSetup>>,
    /// Woken when a replica that could not be set up at start is set up.
    pub set_up_late: Arc<Notify>,
    /// `capgate:<site>:<instance>:`, unique to this process.
    prefix: String,
    next: std::sync::atomic::AtomicU64,
    pub site: String,
    /// How long a replica may take to connect, apply and prepare before the commit is
    /// refused: five times the slowest replica's `partition_latency` or `heartbeat_timeout`,
    /// as for PostgreSQL replicas.
    pub deadline: Duration,
}

impl SyncShared {
    pub fn new(site: &str, replicas: &[crate::config::Replica]) -> SyncShared {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let set_up_late = Arc::new(Notify::new());
        SyncShared {
            replicas: replicas.iter().map(|r| (r.name.clone(), r.url.clone())).collect(),
            health: Vec::new(),
            setups: replicas.iter().map(|r| ReplicaSetup::new(&r.name, set_up_late.clone())).collect(),
            set_up_late,
            prefix: format!("{}{}-{started:x}:", crate::replicate::recovery::site_prefix(site), std::process::id()),
            next: std::sync::atomic::AtomicU64::new(1),
            site: site.to_owned(),
            deadline: replicas.iter().map(|r| r.partition_latency.max(r.heartbeat_timeout)).max().unwrap_or(Duration::from_secs(1)) * 5,
        }
    }

    /// A new global transaction id (≤ 64 bytes for any site name of up to 20 characters).
    pub fn gid(&self) -> String {
        format!("{}{}", self.prefix, self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// Admit commits by these health views (one per replica, in configuration order).
    pub fn watch(&mut self, health: Vec<HealthView>) {
        self.health = health;
    }

    /// One session's replica slots.
    pub fn slots(&self) -> Vec<Arc<ReplicaSlot>> {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, (name, url))| {
                let slot = match self.health.get(i) {
                    Some(h) => ReplicaSlot::watched(name.clone(), url.clone(), h.clone()),
                    None => ReplicaSlot::new(name.clone(), url.clone()),
                };
                Arc::new(match self.setups.get(i) {
                    Some(setup) => slot.with_setup(setup.clone()),
                    None => slot,
                })
            })
            .collect()
    }

    /// Each replica's setup, in configuration order.
    pub fn setups(&self) -> &[Arc<ReplicaSetup>] {
        &self.setups
    }

    /// Per replica: name and URL.
    pub fn replicas(&self) -> &[(String, DbUrl)] {
        &self.replicas
    }
}

/// How a sync commit ended, for the relay to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The primary committed (after every replica prepared, or with no sync changes to
    /// coordinate); the client gets the primary's reply to its COMMIT.
    Committed,
    /// The primary's COMMIT failed; the client gets the primary's error.
    Failed,
    /// Refused: the primary transaction was rolled back; the client gets this error.
    Refused(Refusal),
}

/// Run one sync commit: `gid` names its XA branches and decision record, `origin` this site.
pub async fn commit<P: PrimaryTx>(
    primary: &mut P,
    replicas: &[Arc<ReplicaSlot>],
    policy: &Policy,
    gid: String,
    origin: &str,
    timeout: Duration,
) -> Outcome {
    // No quorum for MySQL yet (decision 0017 is PostgreSQL's): every replica prepares, and
    // the changes are not copied to a stream.
    let (mut machine, first) = SyncCommit::start(gid, false);
    let mut pending = vec![first];
    let mut changes: Vec<Change> = Vec::new();
    // Each replica's prepared branch, until `Action::Finish` hands it to its XA COMMIT.
    let mut branches: Vec<(usize, PreparedBranch)> = Vec::new();
    let mut outcome = None;
    while !pending.is_empty() {
        let action = pending.remove(0);
        let event = match action {
            Action::ReadChanges { gid, .. } => Some(match primary.read_changes(&gid, origin).await {
                Ok(read) => {
                    changes = read;
                    let mut tables: Vec<String> = changes.iter().map(|c| c.tbl.clone()).collect();
                    tables.sort();
                    tables.dedup();
                    let json = (!changes.is_empty()).then(|| Arc::from(Change::to_json(&changes)));
                    let on_partition = strictest_on_partition(policy, &tables);
                    Event::Changes { tables, changes: json, on_partition, quorum: None, replicas: views(replicas) }
                }
                Err(e) => Event::ChangesFailed(e),
            }),
            // Only under a quorum, which MySQL commits do not use (started without a stream).
            Action::Streamed { replicas } => {
                warn!(?replicas, "a MySQL sync commit left replicas to a stream it does not have");
                None
            }
            Action::CommitPlain => {
                outcome = Some(if primary.commit().await == Some(true) { Outcome::Committed } else { Outcome::Failed });
                None
            }
            // `on_partition = "block"`: wait for every replica the health loop does not
            // offer, all within the one timeout.
            Action::WaitAvailable { timeout } => {
                let deadline = tokio::time::Instant::now() + timeout;
                for slot in replicas.iter().filter(|r| r.health.is_some()) {
                    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
                    if let Some(health) = &slot.health {
                        let _ = health.wait_available(left()).await;
                    }
                    if let Some(setup) = &slot.setup {
                        setup.wait_installed(left()).await;
                    }
                }
                Some(Event::Availability(views(replicas)))
            }
            Action::Prepare { replicas: which, gid, .. } => {
                let runs = which.iter().filter_map(|&i| replicas.get(i).map(|slot| (i, slot.clone()))).map(|(i, slot)| {
                    let (gid, changes) = (gid.clone(), &changes);
                    async move { (i, prepare(&slot, &gid, changes, timeout).await) }
                });
                let results = futures_util::future::join_all(runs).await;
                for (replica, result) in results {
                    let result = result.map(|branch| branches.push((replica, branch)));
                    pending.extend(machine.on(Event::Prepared { replica, result }));
                }
                None
            }
            Action::CommitPrimary => match primary.commit().await {
                Some(committed) => Some(Event::PrimaryDone { committed }),
                // Unknown: neither XA COMMIT nor XA ROLLBACK may be guessed. The prepared
                // branches are dropped below (their connections close) and recovery resolves
                // them by the decision record, which committed exactly if the primary did.
                None => {
                    outcome = Some(Outcome::Failed);
                    break;
                }
            },
            Action::Refuse(refusal) => {
                primary.rollback().await;
                outcome = Some(Outcome::Refused(refusal));
                None
            }
            Action::Conflict { replica, detail } => {
                warn!(%replica, %detail, "sync commit refused: the replica's rows differ from the primary's");
                None
            }
            Action::Finish { commit, replicas: which, gid } => {
                for &i in &which {
                    // A replica without a branch did not prepare (its failed or timed-out
                    // attempt rolled back, or left the branch to recovery).
                    let Some(at) = branches.iter().position(|(r, _)| *r == i) else { continue };
                    let (_, branch) = branches.swap_remove(at);
                    let Some(slot) = replicas.get(i).cloned() else { continue };
                    debug_assert_eq!(branch.gid(), gid);
                    tokio::spawn(async move { finish(&slot, branch, commit).await });
                }
                if outcome.is_none() {
                    outcome = Some(if commit { Outcome::Committed } else { Outcome::Failed });
                }
                None
            }
        };
        if let Some(event) = event {
            pending.extend(machine.on(event));
        }
    }
    for (i, branch) in branches {
        // Dropped, its connection closes and the branch waits for recovery.
        warn!(replica = i, gid = branch.gid(), "sync commit ended with a branch it did not finish; recovery will resolve it");
    }
    outcome.unwrap_or(Outcome::Failed)
}

fn views(replicas: &[Arc<ReplicaSlot>]) -> Vec<ReplicaView> {
    replicas.iter().map(|r| r.view()).collect()
}

/// Apply `changes` and prepare `gid` on one replica within `timeout`: the branch, on a
/// connection of `slot` that held no other.
async fn prepare(slot: &ReplicaSlot, gid: &str, changes: &[Change], timeout: Duration) -> Result<PreparedBranch, PrepareFailure> {
    let attempt = async {
        let mut s = slot.state.lock().await;
        let idle = s.idle.pop();
        let reused = idle.is_some();
        let mut conn = match idle {
            Some(c) => c,
            None => {
                let mut c = ReplicaConn::connect(&slot.url, timeout).await.map_err(|e| PrepareFailure::Unavailable(e.to_string()))?;
                if let Some(setup) = &slot.setup {
                    setup.ensure(c.conn()).await.map_err(|e| PrepareFailure::Unavailable(e.to_string()))?;
                }
                c
            }
        };
        let mut sql = None;
        for fresh in [false, true] {
            if fresh || s.tables.is_none() {
                s.tables = Some(capture::tables(conn.conn()).await.map_err(|e| PrepareFailure::Unavailable(e.to_string()))?);
            }
            match apply::statements(changes, s.tables.as_ref().unwrap_or(&Tables::new())) {
                Ok(text) => {
                    sql = Some(text);
                    break;
                }
                Err(e @ (ApplyError::MissingTable(_) | ApplyError::MissingColumn { .. })) if fresh => {
                    s.idle.push(conn);
                    return Err(PrepareFailure::Conflict(e.to_string()));
                }
                Err(ApplyError::MissingTable(_) | ApplyError::MissingColumn { .. }) => continue,
                Err(e) => {
                    s.idle.push(conn);
                    return Err(PrepareFailure::Conflict(e.to_string()));
                }
            }
        }
        let sql = sql.unwrap_or_default();
        let mut result = conn.prepare(gid, &sql).await;
        // A connection kept from an earlier commit may have died meanwhile (the link was reset,
        // the replica restarted): nothing reached the server on it, so try once on a new one.
        if let Err((None, PrepareFailure::Unavailable(_))) = &result {
            if reused {
                let fresh = ReplicaConn::connect(&slot.url, timeout).await.map_err(|e| PrepareFailure::Unavailable(e.to_string()))?;
                result = fresh.prepare(gid, &sql).await;
            }
        }
        match result {
            Ok(branch) => Ok(branch),
            Err((back, failure)) => {
                s.idle.extend(back);
                Err(failure)
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        // The attempt, and the connection it held, are dropped: the server rolls back a
        // branch that was not prepared yet, and keeps one that was for recovery.
        Err(_) => Err(PrepareFailure::Unavailable(format!("no answer within {timeout:?}"))),
    }
}

/// Commit or roll back `branch` on the connection that prepared it (the slot is not locked
/// meanwhile: the session's next commit may be preparing on another connection), then give
/// the connection back to `slot`.
async fn finish(slot: &ReplicaSlot, branch: PreparedBranch, commit: bool) {
    let result = if commit { branch.commit().await } else { branch.rollback().await };
    match result {
        Ok(conn) => {
            let mut s = slot.state.lock().await;
            if s.idle.len() < IDLE_CONNECTIONS {
                s.idle.push(conn);
            }
        }
        Err((gid, e)) => {
            warn!(replica = %slot.name, %gid, commit, "XA {} failed ({e}); recovery will resolve the branch", if commit { "COMMIT" } else { "ROLLBACK" });
        }
    }
}

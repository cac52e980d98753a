//! What the sessions of one PostgreSQL listener share to replicate: the replica sites
//! (health + pooled connections, for sync mode), the outbox shippers (async and bounded
//! modes), the transaction ids of the two-phase commits, and the background recovery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::backend::postgres::Upstream;
use crate::config::Config;
use crate::policy::{Decision, Mode, OnPartition, PolicyHandle};
use crate::replicate::coordinator::UNAVAILABLE;
use crate::replicate::recovery;
use crate::replicate::shipper::{Fleet, Lag};
use crate::replicate::Refusal;
use crate::sites::postgres::PgConnector;
use crate::sites::{AbortOnDrop, SiteError, Sites};

/// The prefix of every prepared transaction capgate creates on a replica:
/// `capgate:<site>:<instance>:<n>`.
pub use crate::replicate::recovery::GID_PREFIX;

/// The default of `recovery_grace`: how long a prepared transaction without a decision is left
/// alone before recovery rolls it back; a live coordinator must get from PREPARE to its primary
/// COMMIT within this.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(30);

/// Time between two recovery rounds.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// Operators resume a halted table through the shipper of its replica.
impl crate::admin::resume::Resume for Replication {
    fn resume<'a>(
        &'a self,
        replica: &'a str,
        table: &'a str,
        adopt: bool,
    ) -> futures_util::future::BoxFuture<'a, Result<(), crate::admin::resume::ResumeError>> {
        match &self.fleet {
            Some(fleet) => fleet.resume(replica, table, adopt),
            None => Box::pin(async move { Err(crate::admin::resume::ResumeError::UnknownReplica(replica.to_owned())) }),
        }
    }
}

/// Decision records older than this are pruned once prepared on no replica.
pub const DECISION_RETENTION: Duration = Duration::from_secs(3600);

/// The `application_name` of the recovery's primary connection.
const RECOVERY_APPLICATION_NAME: &str = "capgate recovery";

/// Whether a write may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Refused: the table's `on_partition` is `fail`.
    Refuse(Refusal),
    /// Must wait (at most `timeout`) for a replica: the table's `on_partition` is `block`;
    /// `refusal` is the answer if the wait runs out.
    Wait {
        timeout: Duration,
        refusal: Refusal,
    },
}

fn partition_text(p: OnPartition) -> String {
    match p {
        OnPartition::Fail => "on_partition = \"fail\"".into(),
        OnPartition::Block { timeout } => format!("on_partition = \"block\" (partition_timeout {timeout:?})"),
    }
}

/// Replication state shared by the sessions.
pub struct Replication {
    /// This site's name (the config's `site`).
    pub site: String,
    /// Random per process: gids of this process are told apart from a crashed one's.
    pub instance: String,
    /// One entry per `[[replicas]]`.
    pub sites: Sites<PgConnector>,
    /// One shipper per replica, and every replica's lag per table read from the primary
    /// (for bounded admission and `/status`, on every capgate process, shipping or not).
    /// None without replicas.
    pub fleet: Option<Arc<Fleet>>,
    /// Upper bound on any one replica operation on a client's critical path.
    pub deadline: Duration,
    /// The longest a sync transaction's PREPARE may take however large it is: half of
    /// `recovery_grace`, so recovery never presumes a live commit aborted.
    pub prepare_limit: Duration,
    /// Per replica (configuration order): whether its site takes writes too (`takes_writes`),
    /// so this site's sync commits may meet its transactions' locks (decision 0018).
    pub takes_writes: Vec<bool>,
    gids: AtomicU64,
    /// (replica, table) pairs of bounded tables currently refused for lag.
    refusing: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// The recovery loop and the capture loop (see [`Replication::start`]); they end when
    /// this value is dropped.
    recovery: Mutex<Vec<AbortOnDrop<()>>>,
    /// The capture triggers as the last round left them.
    pub capture: Arc<super::capture_loop::CaptureState>,
}

impl Replication {
    /// Sites only (health loops and pools); no shipper, no recovery.
    pub fn with_sites(config: &Config, sites: Sites<PgConnector>) -> Replication {
        let instance = format!("{:08x}", rand::random::<u32>());
        let deadline = config.replicas.iter().map(|r| r.partition_latency.max(r.heartbeat_timeout)).max().unwrap_or(Duration::from_secs(1));
        Replication {
            site: config.site.clone(),
            instance,
            sites,
            fleet: None,
            deadline: deadline * 5,
            prepare_limit: config.recovery_grace / 2,
            takes_writes: config.replicas.iter().map(|r| r.takes_writes).collect(),
            gids: AtomicU64::new(0),
            refusing: Default::default(),
            recovery: Mutex::new(Vec::new()),
            capture: Arc::default(),
        }
    }

    /// Everything running (on the current runtime): the sites, one shipper per replica (each
    /// installs the `capgate` schema on the primary and on its replica, retrying with
    /// backoff; idle while the outbox is empty), and the two-phase commit recovery loop.
    /// Nothing here waits on a database: unreachable replicas (or primary) are retried in
    /// the background while the listener serves. `on_conflict` of each shipped statement is
    /// the strictest of its tables' settings in the policy current at that moment.
    pub fn start(config: &Config, policy: Arc<PolicyHandle>, sites: Sites<PgConnector>) -> Result<Arc<Replication>, SiteError> {
        let mut replication = Replication::with_sites(config, sites);
        if config.replicas.is_empty() {
            return Ok(Arc::new(replication));
        }
        let primary = Upstream::new(config.primary.url.clone())
            .map_err(|e| SiteError::failed("primary", "loading the TLS settings of [primary].url", e))?;
        let sites = &replication.sites;
        let health = |name: &str| sites.iter().find(|s| s.name() == name).map(|s| s.health().clone());
        let fleet = Fleet::start(config, policy.clone(), health, replication.deadline)
            .map_err(|e| SiteError::failed("primary", "loading the TLS settings of a URL", e))?;
        replication.fleet = Some(Arc::new(fleet));
        let replication = Arc::new(replication);
        let grace = config.recovery_grace;
        let interval = RECOVERY_INTERVAL.min((grace / 2).max(Duration::from_secs(1)));
        let task = tokio::spawn(recovery_loop(Arc::downgrade(&replication), primary.clone(), grace, interval));
        let writing = crate::backend::postgres_checks::writing_sites(config);
        let capture = tokio::spawn(super::capture_loop::run(primary, config.site.clone(), writing, policy, replication.capture.clone()));
        replication.recovery.lock().unwrap_or_else(|e| e.into_inner()).extend([AbortOnDrop(task), AbortOnDrop(capture)]);
        Ok(replication)
    }

    /// A new global transaction id for one two-phase commit.
    pub fn next_gid(&self) -> String {
        let n = self.gids.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{GID_PREFIX}:{}:{}:{n}", self.site, self.instance)
    }

    /// The latest lag of `replica` as measured from the primary (None: not known).
    pub fn lag(&self, replica: &str) -> Option<Lag> {
        self.fleet.as_ref().and_then(|f| f.lag(replica)).filter(|l| l.measured)
    }

    /// Bounded mode: `Some(lag seconds)` when writes to `table` must be refused because its
    /// changes wait on `replica` longer than `max_lag` (the table's own lag, not the
    /// replica's total). Hysteresis: once over, a table stays refused until its lag is back
    /// under three quarters of the budget, so it does not flap at the edge. A lag not known
    /// (not measured yet, the primary out of reach) counts as over: a bounded table must not
    /// take writes it cannot vouch for.
    pub fn over_budget(&self, replica: &str, table: &str, max_lag: Duration) -> Option<f64> {
        let Some(lag) = self.lag(replica) else { return Some(f64::INFINITY) };
        let seconds = lag.table(table).seconds();
        let key = (replica.to_owned(), table.to_owned());
        let mut refusing = self.refusing.lock().unwrap_or_else(|p| p.into_inner());
        let budget = max_lag.as_secs_f64();
        let over = if refusing.contains(&key) { seconds >= budget * 0.75 } else { seconds > budget };
        if over {
            refusing.insert(key);
            Some(seconds)
        } else {
            refusing.remove(&key);
            None
        }
    }

    /// Whether some bounded table of `policy` may be refused for its lag now: a replica's lag
    /// is not measured (which counts as over every budget), or a bounded table with changes
    /// pending has reached three quarters of its `max_lag` (where [`Self::over_budget`]'s
    /// hysteresis may keep it refused). Reads the lags only: it decides whether a commit is
    /// worth checking at all ([`super::coordinator`]'s bounded check at COMMIT), so that
    /// while every budget holds no commit pays for the check.
    pub fn bounded_at_risk(&self, policy: &crate::policy::Policy) -> bool {
        if !policy.has_bounded() {
            return false;
        }
        self.sites.iter().any(|site| match self.lag(site.name()) {
            None => true,
            Some(lag) => lag.tables.iter().any(|(table, pending)| {
                let mode = crate::classify::TableName::parse(table).map(|t| policy.decide_table(&t).mode);
                matches!(mode, Some(Mode::Bounded { max_lag, .. }) if pending.seconds() >= max_lag.as_secs_f64() * 0.75)
            }),
        })
    }

    /// Changes of `table` queued for some replica (0 when none, None when not known): a
    /// table that became sync admits sync writes only once its async queue has drained, so
    /// no change of a row is ever applied out of order.
    pub fn queued(&self, table: &str) -> Option<u64> {
        self.fleet.as_ref().and_then(|f| f.pending(table))
    }

    /// Whether writes to the tables of `decisions` may run now: every replica available for a
    /// sync table, every replica's lag within budget for a bounded one, and — when the
    /// statement writes rows (`rows`, i.e. not DDL) — the table's capture trigger in place. Refusals name the
    /// table, the replica, its state, the mode and the remedy.
    pub fn admit(&self, decisions: &[Decision], rows: bool) -> Admit {
        let mut wait: Option<(Duration, Refusal)> = None;
        for d in decisions {
            if rows && d.mode != Mode::Local && !self.sites.is_empty() && self.capture.captured(&d.table) == Some(false) {
                let why = self.capture.failure(&d.table).unwrap_or_else(|| {
                    "capgate has not installed its capture trigger on it yet (a table created around capgate is picked up within 10 s)"
                        .into()
                });
                return Admit::Refuse(Refusal {
                    code: UNAVAILABLE,
                    message: format!("capgate refused this write to {} (mode {}): {why}; nothing was written", d.table, d.mode.name()),
                    hint: "fix what the message says, or make the table local in the policy; capgate retries the trigger every 10 s".into(),
                });
            }
            // When sync commits are streamed (some rule has a quorum below the replicas), every
            // sync table has its own commits in the stream, for the replicas that miss the
            // quorum; there, a replica behind on the table's rows fails its prepare on the old
            // images and catches up in order (decision 0017). Not a reason to refuse.
            let quorum = d.mode.quorum_of(self.sites.len());
            let streamed = self.fleet.as_ref().is_some_and(|f| f.streams_sync());
            if let (Mode::Sync { .. }, true, false) = (d.mode, rows, streamed) {
                if let Some(n @ 1..) = self.queued(&d.table.to_string()) {
                    return Admit::Refuse(Refusal {
                        code: UNAVAILABLE,
                        message: format!(
                            "capgate refused this write to {} (mode sync): {n} earlier change(s) of the table are still queued for asynchronous shipping (it was async, or was written around capgate); nothing was written",
                            d.table
                        ),
                        hint: "retry once the queue has drained (see capgate's /status); a sync write must not overtake them".into(),
                    });
                }
            }
            let (on_partition, refusal) = match d.mode {
                Mode::Sync { on_partition, .. } => match self.sites.iter().find(|s| !s.health().state().is_available()) {
                    Some(_) if self.sites.iter().filter(|s| s.health().state().is_available()).count() >= quorum => continue,
                    Some(site) => {
                        let s = site.health().status();
                        let refusal = Refusal {
                            code: UNAVAILABLE,
                            message: format!(
                                "capgate refused this write to {}: replica \"{}\" is {} ({}), and the table is sync with {}; nothing was written",
                                d.table,
                                site.name(),
                                s.state,
                                s.last_error.as_deref().unwrap_or("no recent heartbeat"),
                                partition_text(on_partition)
                            ),
                            hint: "retry when the link to the replica heals; or, if availability matters more than consistency for this table, make it async or bounded in the policy".into(),
                        };
                        (on_partition, refusal)
                    }
                    None => continue,
                },
                Mode::Bounded { max_lag, on_partition, .. } => {
                    let over = self
                        .sites
                        .iter()
                        .find_map(|site| self.over_budget(site.name(), &d.table.to_string(), max_lag).map(|l| (site.name().to_owned(), l)));
                    let Some((name, seconds)) = over else { continue };
                    let behind = if seconds.is_finite() {
                        format!("is {seconds:.1} s behind")
                    } else {
                        "has a lag capgate cannot measure now (its shipper is not running yet)".to_owned()
                    };
                    let refusal = Refusal {
                        code: UNAVAILABLE,
                        message: format!(
                            "capgate refused this write to {}: replica \"{name}\" {behind}, over the table's budget max_lag = {max_lag:?} (mode bounded, {})",
                            d.table,
                            partition_text(on_partition)
                        ),
                        hint: "retry once the replica has caught up (see capgate's /status), or raise max_lag / make the table async in the policy".into(),
                    };
                    (on_partition, refusal)
                }
                Mode::Async { .. } | Mode::Local => continue,
            };
            match on_partition {
                OnPartition::Fail => return Admit::Refuse(refusal),
                OnPartition::Block { timeout } => match &wait {
                    Some((shortest, _)) if *shortest <= timeout => {}
                    _ => wait = Some((timeout, refusal)),
                },
            }
        }
        match wait {
            Some((timeout, refusal)) => Admit::Wait { timeout, refusal },
            None => Admit::Go,
        }
    }

    /// [`Replication::admit`], waiting up to the tables' `partition_timeout` where they say
    /// `block`. `None`: the write may run.
    pub async fn admit_waiting(&self, decisions: &[Decision], rows: bool) -> Option<Refusal> {
        let timeout = match self.admit(decisions, rows) {
            Admit::Go => return None,
            Admit::Refuse(r) => return Some(r),
            Admit::Wait { timeout, .. } => timeout,
        };
        let until = tokio::time::Instant::now() + timeout;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match self.admit(decisions, rows) {
                Admit::Go => return None,
                Admit::Refuse(r) => return Some(r),
                Admit::Wait { mut refusal, .. } if tokio::time::Instant::now() >= until => {
                    refusal.message.push_str(&format!(" (waited {timeout:?})"));
                    return Some(refusal);
                }
                Admit::Wait { .. } => {}
            }
        }
    }

    /// Tell every shipper that new changes committed.
    pub fn wake_shippers(&self) {
        if let Some(f) = &self.fleet {
            f.wake();
        }
    }

    /// One recovery round over every replica (see [`crate::replicate::recovery`]): resolves
    /// this site's prepared transactions, then prunes old decisions if every replica could
    /// be looked at. Each step is bounded by [`Replication::deadline`]. Returns whether the
    /// round reached the primary and every replica.
    pub async fn recover_once(&self, primary: &tokio_postgres::Client, grace: Duration, failing: &mut HashMap<String, bool>) -> bool {
        let mut complete = true;
        let mut still_prepared = Vec::new();
        for site in self.sites.iter() {
            let name = site.name().to_owned();
            let round = async {
                let conn = site.pool().checkout(self.deadline).await?;
                if !failing.contains_key(&format!("{name} installed")) {
                    // The apply function sync commits call, before the first one needs it.
                    conn.run("installing the capgate schema", self.deadline, crate::replicate::apply::install_replica(&conn)).await?;
                }
                conn.run("recovering prepared transactions", self.deadline, recovery::recover(primary, &conn, &self.site, grace)).await
            };
            let was_failing = failing.get(&name).copied().unwrap_or(false);
            match round.await {
                Ok(report) => {
                    failing.insert(name.clone(), false);
                    failing.insert(format!("{name} installed"), false);
                    if report.acted() {
                        info!(
                            replica = %name,
                            committed = ?report.committed,
                            rolled_back = ?report.rolled_back,
                            left = report.left.len(),
                            "recovery: resolved prepared transactions (committed: decided on the primary; rolled back: undecided for over {grace:?})"
                        );
                    } else if !report.left.is_empty() {
                        debug!(replica = %name, left = ?report.left, "recovery: prepared transactions still within their grace");
                    }
                    if was_failing {
                        info!(replica = %name, "recovery: the replica is reachable again");
                    }
                    still_prepared.extend(report.left);
                }
                Err(e) => {
                    complete = false;
                    failing.insert(name.clone(), true);
                    if was_failing {
                        debug!(replica = %name, "recovery: {e}");
                    } else {
                        warn!(replica = %name, "recovery: {e}; retrying every {RECOVERY_INTERVAL:?}");
                    }
                }
            }
        }
        if complete {
            let pruned =
                tokio::time::timeout(self.deadline, recovery::prune_decisions(primary, &self.site, &still_prepared, DECISION_RETENTION))
                    .await;
            match pruned {
                Ok(Ok(n)) if n > 0 => debug!("recovery: pruned {n} decision records"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!("recovery: pruning decision records: {e}");
                    complete = false;
                }
                Err(_) => {
                    warn!("recovery: pruning decision records did not finish within {:?}", self.deadline);
                    complete = false;
                }
            }
        }
        complete
    }
}

/// At start and every `interval`: a primary connection (kept while it works), the primary
/// schema installed once, then [`Replication::recover_once`]. Ends when the replication is
/// dropped.
async fn recovery_loop(replication: Weak<Replication>, primary: Upstream, grace: Duration, interval: Duration) {
    let mut conn: Option<(tokio_postgres::Client, AbortOnDrop<()>)> = None;
    let mut installed = false;
    let mut primary_failing = false;
    let mut failing = HashMap::new();
    loop {
        let Some(rep) = replication.upgrade() else { return };
        let deadline = rep.deadline;
        if conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            conn = None;
        }
        if conn.is_none() {
            match tokio::time::timeout(deadline, primary.client_with_task(RECOVERY_APPLICATION_NAME)).await {
                Ok(Ok((client, task))) => conn = Some((client, AbortOnDrop(task))),
                Ok(Err(e)) => primary_fail(&mut primary_failing, format!("cannot connect to the primary: {e}")),
                Err(_) => primary_fail(&mut primary_failing, format!("connecting to the primary did not finish within {deadline:?}")),
            }
        }
        if let Some((client, _)) = &conn {
            if !installed {
                match tokio::time::timeout(deadline, crate::store::postgres::primary::install_primary(client)).await {
                    Ok(Ok(())) => installed = true,
                    Ok(Err(e)) => primary_fail(&mut primary_failing, format!("installing the capgate schema on the primary: {e}")),
                    Err(_) => primary_fail(
                        &mut primary_failing,
                        format!("installing the capgate schema on the primary did not finish within {deadline:?}"),
                    ),
                }
                if !installed {
                    conn = None;
                }
            }
        }
        if let (true, Some((client, _))) = (installed, &conn) {
            if primary_failing {
                info!("recovery: the primary is reachable again");
                primary_failing = false;
            }
            if !rep.recover_once(client, grace, &mut failing).await && client.is_closed() {
                conn = None;
            }
        }
        drop(rep);
        tokio::time::sleep(interval).await;
    }
}

fn primary_fail(failing: &mut bool, e: String) {
    if *failing {
        debug!("recovery: {e}");
    } else {
        warn!("recovery: {e}; retrying every {RECOVERY_INTERVAL:?}");
        *failing = true;
    }
}

#[cfg(test)]
mod tests {
    use crate::classify::TableName;

    #[test]
    fn table_names_read_back_as_displayed() {
        for (schema, name) in [("public", "orders"), ("public", "Order Items"), ("we.ird", "a\"b"), ("s", "t$1")] {
            let t = TableName::new(schema, name);
            assert_eq!(TableName::parse(&t.to_string()), Some(t));
        }
        assert_eq!(TableName::parse("orders"), None);
        assert_eq!(TableName::parse("a.b.c"), None);
        assert_eq!(TableName::parse("\"open"), None);
    }
}

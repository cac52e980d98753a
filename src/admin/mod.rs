//! What operators see of a running capgate: the admin HTTP listener (`/` the dashboard,
//! `/status` JSON, `/metrics` Prometheus text, `/history`, `/policy`, `/conflicts`) and the
//! admin SQL commands answered on the application port (`SHOW CAPGATE STATUS` …).
//!
//! - [`status`]: the `/status` document, built from the views other components publish;
//! - `metrics`: the Prometheus text;
//! - [`history`]: the last minutes of each replica's figures, sampled every second (the
//!   dashboard's chart, the drain rate);
//! - [`commands`]: the admin SQL commands, protocol-neutral: parse, check the user, answer
//!   with a [`table::ResultTable`] each front end encodes in its own protocol;
//! - [`conflicts`]: the conflict records the replicas keep, listed and marked resolved
//!   ([`conflict_log`]: those of MySQL replicas, read back from `conflict_log`);
//! - `http` and `dashboard`: the listener and its embedded page.
//!
//! It only reads, except `CAPGATE RELOAD` (the policy) and marking a conflict resolved.
//! Figures nobody can know right now are `null` in `/status` and absent from `/metrics`,
//! never made-up zeros. It listens on loopback by default; when `admin_token` is set every
//! data request must carry `Authorization: Bearer <token>` (the dashboard page itself holds
//! no data and asks for the token).

pub mod commands;
pub mod conflict_log;
pub mod conflicts;
mod dashboard;
pub mod history;
mod http;
mod metrics;
pub mod resume;
pub mod shipping;
pub mod status;
pub mod table;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::config::Config;
use crate::policy::PolicyHandle;
use crate::replicate::Router;
use crate::sites::HealthView;

pub use http::serve;
pub use status::{ReplicaDoc, StatusDoc, TableDoc};

/// Why an admin action failed; the message is shown to the operator as it is.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The user may not run admin commands.
    #[error("permission denied: {0}")]
    Permission(String),
    /// The command is not one capgate knows, or is malformed.
    #[error("{0}")]
    Syntax(String),
    /// A replica (or the primary) could not be asked.
    #[error("{0}")]
    Unreachable(String),
    /// The command ran and failed (a bad policy file, a verify that could not run …).
    #[error("{0}")]
    Failed(String),
}

/// What the admin endpoints read of one replica.
pub struct ReplicaSource {
    pub health: HealthView,
    /// The shippers of this process and the lag read from the primary, when replication
    /// runs here (the replica is looked up by name).
    pub shipper: Option<ShipperView>,
}

/// The process's row-image shippers and lag monitor (PostgreSQL's or MySQL's).
pub struct ShipperView {
    pub fleet: Arc<dyn shipping::Shippers>,
}

impl ReplicaSource {
    pub fn new(health: HealthView, shipper: Option<ShipperView>) -> ReplicaSource {
        ReplicaSource { health, shipper }
    }

    /// The replica's shipping figures (None: no replication in this process).
    pub fn shipping(&self) -> Option<shipping::ShippingDoc> {
        self.shipper.as_ref().filter(|v| v.fleet.running()).map(|v| shipping::shipping_doc(&*v.fleet, self.health.replica()))
    }
}

/// Everything the admin endpoints and commands read, shared by the HTTP listener and every
/// client session (for admin SQL).
pub struct AdminState {
    pub config: Arc<Config>,
    pub policy: Arc<PolicyHandle>,
    pub router: Arc<Router>,
    /// One entry per configured replica.
    pub replicas: Vec<ReplicaSource>,
    /// The primary's own heartbeat (None in tests that build a state without one).
    pub primary: Option<HealthView>,
    /// Client sessions being served now.
    pub connections: Box<dyn Fn() -> usize + Send + Sync>,
    /// The last minutes of every replica's figures.
    pub history: history::History,
    /// Configuration problems found on each replica by the prerequisite checks (by replica
    /// name): a replica that cannot PREPARE is misconfigured, not partitioned.
    pub problems: Mutex<std::collections::HashMap<String, Vec<String>>>,
    /// A recorder of this listener's own (not the process-global one), so several servers
    /// in one process (tests) do not share figures.
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// What resumes a halted table (`POST /tables/<table>/resume`); None: no shipper here.
    pub resume: Option<Arc<dyn resume::Resume>>,
    /// The session workers' runtimes (set once the listener runs): `/metrics` counts their
    /// live tasks, so a soak can tell tasks that outlive their sessions.
    pub session_runtimes: Mutex<Vec<tokio::runtime::Handle>>,
}

impl AdminState {
    pub fn new(
        config: Arc<Config>,
        policy: Arc<PolicyHandle>,
        router: Arc<Router>,
        replicas: Vec<ReplicaSource>,
        primary: Option<HealthView>,
        connections: Box<dyn Fn() -> usize + Send + Sync>,
    ) -> AdminState {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        AdminState {
            config,
            policy,
            router,
            replicas,
            primary,
            connections,
            history: history::History::default(),
            problems: Mutex::default(),
            recorder,
            handle,
            resume: None,
            session_runtimes: Mutex::default(),
        }
    }

    /// Lets operators resume halted tables through `resumer` (the running shippers).
    pub fn with_resume(mut self, resumer: Arc<dyn resume::Resume>) -> AdminState {
        self.resume = Some(resumer);
        self
    }

    /// The site's name.
    pub fn site(&self) -> &str {
        &self.config.site
    }

    /// The bearer token the HTTP endpoints require, if any.
    pub fn token(&self) -> Option<&str> {
        self.config.admin_token.as_deref()
    }

    /// Configuration problems known for `replica`.
    pub fn problems_of(&self, replica: &str) -> Vec<String> {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).get(replica).cloned().unwrap_or_default()
    }
}

/// Background work the admin views need: the history sampler (every second) and the
/// prerequisite checks of each replica (at start, then every minute). Runs until the state
/// is dropped or the returned task is aborted.
pub async fn maintain(state: Weak<AdminState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_check = tokio::time::Instant::now();
    let mut checking: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        state.history.sample(&state);
        if tokio::time::Instant::now() >= next_check && checking.as_ref().is_none_or(|t| t.is_finished()) {
            next_check = tokio::time::Instant::now() + Duration::from_secs(60);
            let weak = Arc::downgrade(&state);
            checking = Some(tokio::spawn(async move { check_replicas(weak).await }));
        }
    }
}

/// Run the prerequisite checks on every replica and publish their problems.
async fn check_replicas(state: Weak<AdminState>) {
    let Some(config) = state.upgrade().map(|s| s.config.clone()) else { return };
    let Some(policy) = state.upgrade().map(|s| s.policy.current()) else { return };
    for replica in &config.replicas {
        let problems = match replica.url.scheme {
            crate::config::Scheme::MySql => crate::backend::mysql_checks::replica_problems(&config.primary.url, replica, &policy).await,
            crate::config::Scheme::Postgres => crate::backend::postgres_checks::replica_problems(replica, &policy).await,
        };
        let Some(state) = state.upgrade() else { return };
        state.problems.lock().unwrap_or_else(|e| e.into_inner()).insert(replica.name.clone(), problems);
    }
}

//! The admin HTTP listener: `GET /metrics` (Prometheus text format) and `GET /status`
//! (JSON), for operators, dashboards and outside tools.
//!
//! It only reads: every figure comes from the views the other components publish (replica
//! health, the router's counters, the session semaphore, the policy handle), read at request
//! time. It listens on loopback by default; when `admin_token` is set every request must carry
//! `Authorization: Bearer <token>` (required by the configuration on any other address).
//!
//! Figures nobody can know right now are reported as `null` in `/status` and absent from
//! `/metrics`, never as made-up zeros: a replica without a shipper, or whose shipper does
//! not hold the shipping lock (not connected to the primary, or another capgate process
//! ships), has no lag figures. Sync commit latency is not measured yet.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router as HttpRouter};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::classify::TableName;
use crate::policy::{Mode, Policy, PolicyHandle};
use crate::replicate::outbox::{Lag, Phase, ShipperStats};
use crate::replicate::Router;
use crate::sites::HealthView;

/// What the admin endpoints read of one replica.
pub struct ReplicaSource {
    pub health: HealthView,
    /// The replica's outbox shipper, when one runs.
    pub shipper: Option<ShipperView>,
}

/// A running shipper's published figures.
pub struct ShipperView {
    pub stats: Arc<ShipperStats>,
    pub lag: tokio::sync::watch::Receiver<Lag>,
}

impl ReplicaSource {
    pub fn new(health: HealthView, shipper: Option<ShipperView>) -> ReplicaSource {
        ReplicaSource { health, shipper }
    }
}

/// What the admin endpoints read.
pub struct AdminState {
    pub site: String,
    pub policy: Arc<PolicyHandle>,
    pub router: Arc<Router>,
    /// One entry per configured replica.
    pub replicas: Vec<ReplicaSource>,
    /// Client sessions being served now.
    pub connections: Box<dyn Fn() -> usize + Send + Sync>,
    /// Required bearer token, if configured.
    pub token: Option<String>,
    /// A recorder of this listener's own (not the process-global one), so several servers
    /// in one process (tests) do not share figures.
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// (replica, table) pairs given per-table gauges so far: set back to 0 once the table
    /// has nothing pending (the recorder keeps a gauge's last value).
    table_gauges: Mutex<BTreeSet<(String, String)>>,
}

impl AdminState {
    pub fn new(
        site: String,
        policy: Arc<PolicyHandle>,
        router: Arc<Router>,
        replicas: Vec<ReplicaSource>,
        connections: Box<dyn Fn() -> usize + Send + Sync>,
        token: Option<String>,
    ) -> AdminState {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        AdminState { site, policy, router, replicas, connections, token, recorder, handle, table_gauges: Mutex::default() }
    }
}

/// The `/status` document. Field names are relied on by outside tools: add, never rename.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    pub site: String,
    pub policy_version: u64,
    pub client_connections: usize,
    pub replicas: Vec<ReplicaDoc>,
}

/// One replica in `/status`.
#[derive(Debug, Serialize)]
pub struct ReplicaDoc {
    pub name: String,
    /// healthy | suspect | partitioned | healing
    pub state: &'static str,
    pub rtt_ms: Option<f64>,
    pub state_for_seconds: f64,
    pub last_error: Option<String>,
    /// Asynchronous replication figures: `null` while unknown (no shipper, or it does not
    /// hold the shipping lock).
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
    pub applied_seq: Option<u64>,
    /// Conflicts this process's shipper met since it started (`null`: no shipper).
    pub conflicts: Option<u64>,
    /// `not running` (no shipper) | `connecting` (to the primary) | `standby` (another
    /// process ships) | `connecting to the replica` | `running` | `halted: <why>`.
    pub shipping: String,
    /// The shipper's last error, if any (it retries by itself).
    pub shipping_error: Option<String>,
    /// Tables with pending rows and tables named (without wildcards) by non-local policy
    /// rules: `{table, mode, lag_seconds, pending_rows}`.
    pub tables: Vec<TableDoc>,
}

/// One table of one replica in `/status`.
#[derive(Debug, Serialize)]
pub struct TableDoc {
    pub table: String,
    /// The table's mode under the current policy.
    pub mode: &'static str,
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
}

/// The shipper figures of one replica (None: unknown).
struct Shipping {
    lag: Option<Lag>,
    state: String,
    error: Option<String>,
    conflicts: u64,
    applied_seq: u64,
}

fn shipping(view: &ShipperView) -> Shipping {
    let stats = &view.stats;
    let phase = stats.phase();
    let state = match stats.halted() {
        Some(why) => format!("halted: {why}"),
        None => phase.as_str().to_owned(),
    };
    let leading = stats.leader.load(Ordering::Relaxed) && matches!(phase, Phase::ConnectingReplica | Phase::Running | Phase::Halted);
    Shipping {
        lag: leading.then(|| view.lag.borrow().clone()),
        state,
        error: stats.last_error(),
        conflicts: stats.conflicts.load(Ordering::Relaxed),
        applied_seq: stats.applied_seq.load(Ordering::Relaxed).max(0) as u64,
    }
}

/// The tables to show for one replica: those with pending rows, then those exact rules name.
fn tables(policy: &Policy, lag: Option<&Lag>) -> Vec<TableDoc> {
    let mut names: BTreeSet<String> = lag.map(|l| l.tables.keys().cloned().collect()).unwrap_or_default();
    for rule in &policy.rules {
        if rule.mode == Mode::Local {
            continue;
        }
        if let (Some(schema), Some(table)) = (rule.pattern.schema.literal(), rule.pattern.table.literal()) {
            names.insert(TableName::new(schema, table).to_string());
        }
    }
    names
        .into_iter()
        .map(|table| {
            let mode = TableName::parse(&table).map_or("unknown", |t| policy.decide_table(&t).mode.name());
            let t = lag.map(|l| l.table(&table));
            TableDoc { mode, lag_seconds: t.as_ref().map(|t| t.seconds()), pending_rows: t.as_ref().map(|t| t.pending_rows), table }
        })
        .collect()
}

fn status(state: &AdminState) -> StatusDoc {
    let policy = state.policy.current();
    StatusDoc {
        site: state.site.clone(),
        policy_version: policy.version,
        client_connections: (state.connections)(),
        replicas: state
            .replicas
            .iter()
            .map(|source| {
                let view = &source.health;
                let s = view.status();
                let ship = source.shipper.as_ref().map(shipping);
                let lag = ship.as_ref().and_then(|x| x.lag.as_ref());
                ReplicaDoc {
                    name: view.replica().to_owned(),
                    state: s.state.as_str(),
                    rtt_ms: s.smoothed_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    state_for_seconds: s.in_state().as_secs_f64(),
                    last_error: s.last_error.as_deref().map(str::to_owned),
                    lag_seconds: lag.map(Lag::seconds),
                    pending_rows: lag.map(|l| l.pending_rows),
                    applied_seq: lag.and(ship.as_ref().map(|x| x.applied_seq)),
                    conflicts: ship.as_ref().map(|x| x.conflicts),
                    shipping: ship.as_ref().map_or_else(|| "not running".to_owned(), |x| x.state.clone()),
                    shipping_error: ship.as_ref().and_then(|x| x.error.clone()),
                    tables: tables(&policy, lag),
                }
            })
            .collect(),
    }
}

/// Render the Prometheus text: the figures are set from the views just before rendering.
fn metrics_text(state: &AdminState) -> String {
    metrics::with_local_recorder(&state.recorder, || {
        metrics::gauge!("capgate_client_connections").set((state.connections)() as f64);
        metrics::gauge!("capgate_policy_version").set(state.policy.current().version as f64);
        let c = &state.router.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("capgate_unknown_statements_total", "action" => "relay").absolute(load(&c.unknown_relayed));
        metrics::counter!("capgate_unknown_statements_total", "action" => "refuse").absolute(load(&c.unknown_refused));
        let limits = &crate::frontend::limits::LIMITS;
        metrics::counter!("capgate_startup_timeouts_total").absolute(load(&limits.startup_timeouts));
        metrics::counter!("capgate_idle_session_timeouts_total").absolute(load(&limits.idle_timeouts));
        metrics::counter!("capgate_sessions_refused_total", "reason" => "max_connections").absolute(load(&limits.over_limit));
        metrics::counter!("capgate_sessions_refused_total", "reason" => "file_descriptors").absolute(load(&limits.no_descriptors));
        metrics::counter!("capgate_accept_errors_total").absolute(load(&limits.accept_errors));
        let policy = state.policy.current();
        let mut table_gauges = state.table_gauges.lock().unwrap_or_else(|e| e.into_inner());
        for source in &state.replicas {
            let view = &source.health;
            if let Some(shipper) = &source.shipper {
                shipper_metrics(view.replica(), shipper, &policy, &mut table_gauges);
            }
            let s = view.status();
            let replica = view.replica().to_owned();
            metrics::gauge!("capgate_replica_up", "replica" => replica.clone()).set(if s.state.is_available() { 1.0 } else { 0.0 });
            for st in ["healthy", "suspect", "partitioned", "healing"] {
                metrics::gauge!("capgate_replica_state", "replica" => replica.clone(), "state" => st).set(if s.state.as_str() == st {
                    1.0
                } else {
                    0.0
                });
            }
            if let Some(rtt) = s.smoothed_rtt {
                metrics::gauge!("capgate_replica_rtt_seconds", "replica" => replica.clone()).set(rtt.as_secs_f64());
            }
            metrics::counter!("capgate_replica_state_changes_total", "replica" => replica).absolute(s.transitions);
        }
    });
    state.handle.render()
}

/// The outbox figures of one replica. Lag gauges are only set while known (see the module
/// documentation); a table's gauges go back to 0 once it has nothing pending.
fn shipper_metrics(replica: &str, view: &ShipperView, policy: &Policy, table_gauges: &mut BTreeSet<(String, String)>) {
    let ship = shipping(view);
    let stats = &view.stats;
    let r = replica.to_owned();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    metrics::gauge!("capgate_shipper_running", "replica" => r.clone()).set(if stats.phase() == Phase::Running { 1.0 } else { 0.0 });
    metrics::gauge!("capgate_shipper_halted", "replica" => r.clone()).set(if stats.halted().is_some() { 1.0 } else { 0.0 });
    metrics::counter!("capgate_shipped_statements_total", "replica" => r.clone()).absolute(load(&stats.statements));
    metrics::counter!("capgate_shipped_transactions_total", "replica" => r.clone()).absolute(load(&stats.transactions));
    metrics::counter!("capgate_shipped_batches_total", "replica" => r.clone()).absolute(load(&stats.batches));
    metrics::counter!("capgate_shipper_retries_total", "replica" => r.clone()).absolute(load(&stats.retries));
    for ((table, kind), n) in stats.conflicts_by_table() {
        metrics::counter!("capgate_conflicts_total", "replica" => r.clone(), "table" => table, "kind" => kind).absolute(n);
    }
    let Some(lag) = &ship.lag else { return };
    metrics::gauge!("capgate_outbox_pending_rows", "replica" => r.clone()).set(lag.pending_rows as f64);
    metrics::gauge!("capgate_outbox_lag_seconds", "replica" => r.clone()).set(lag.seconds());
    metrics::gauge!("capgate_replica_applied_seq", "replica" => r.clone()).set(ship.applied_seq as f64);
    for t in tables(policy, Some(lag)) {
        table_gauges.insert((r.clone(), t.table.clone()));
    }
    for (gr, table) in table_gauges.iter().filter(|(gr, _)| gr == replica) {
        let t = lag.table(table);
        metrics::gauge!("capgate_replica_lag_seconds", "replica" => gr.clone(), "table" => table.clone()).set(t.seconds());
        metrics::gauge!("capgate_replica_pending_rows", "replica" => gr.clone(), "table" => table.clone()).set(t.pending_rows as f64);
    }
}

fn authorized(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else { return true };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| crate::protocol::constant_time_eq(g.as_bytes(), token.as_bytes()))
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "capgate admin: a bearer token is required (admin_token)\n")
        .into_response()
}

async fn get_status(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    Json(status(&state)).into_response()
}

async fn get_metrics(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics_text(&state)).into_response()
}

/// Serve the admin endpoints on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let app = HttpRouter::new().route("/status", get(get_status)).route("/metrics", get(get_metrics)).with_state(state);
    tracing::info!(?addr, "admin endpoints: /status, /metrics");
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("admin listener failed: {e}");
    }
}

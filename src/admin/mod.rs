//! The admin HTTP listener: `GET /metrics` (Prometheus text format) and `GET /status`
//! (JSON), for operators, dashboards and outside tools.
//!
//! It only reads: every figure comes from the views the other components publish (replica
//! health, the router's counters, the session semaphore, the policy handle), read at request
//! time. It listens on loopback by default; when `admin_token` is set every request must carry
//! `Authorization: Bearer <token>` (required by the configuration on any other address).
//!
//! Figures that belong to components not built yet (outbox lag, pending rows, applied
//! watermark, conflicts, sync commit latency) are reported as `null` in `/status` and absent
//! from `/metrics`, never as made-up zeros.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router as HttpRouter};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::policy::PolicyHandle;
use crate::replicate::Router;
use crate::sites::HealthView;

/// What the admin endpoints read.
pub struct AdminState {
    pub site: String,
    pub policy: Arc<PolicyHandle>,
    pub router: Arc<Router>,
    /// One view per configured replica.
    pub replicas: Vec<HealthView>,
    /// Client sessions being served now.
    pub connections: Box<dyn Fn() -> usize + Send + Sync>,
    /// Required bearer token, if configured.
    pub token: Option<String>,
    /// A recorder of this listener's own (not the process-global one), so several servers
    /// in one process (tests) do not share figures.
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl AdminState {
    pub fn new(
        site: String,
        policy: Arc<PolicyHandle>,
        router: Arc<Router>,
        replicas: Vec<HealthView>,
        connections: Box<dyn Fn() -> usize + Send + Sync>,
        token: Option<String>,
    ) -> AdminState {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        AdminState { site, policy, router, replicas, connections, token, recorder, handle }
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
    /// Asynchronous replication figures: `null` until the outbox shipper runs.
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
    pub applied_seq: Option<u64>,
    pub conflicts: Option<u64>,
    /// `not running` until the outbox shipper exists.
    pub shipping: &'static str,
    pub tables: Vec<serde_json::Value>,
}

fn status(state: &AdminState) -> StatusDoc {
    StatusDoc {
        site: state.site.clone(),
        policy_version: state.policy.current().version,
        client_connections: (state.connections)(),
        replicas: state
            .replicas
            .iter()
            .map(|view| {
                let s = view.status();
                ReplicaDoc {
                    name: view.replica().to_owned(),
                    state: s.state.as_str(),
                    rtt_ms: s.smoothed_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    state_for_seconds: s.in_state().as_secs_f64(),
                    last_error: s.last_error.as_deref().map(str::to_owned),
                    lag_seconds: None,
                    pending_rows: None,
                    applied_seq: None,
                    conflicts: None,
                    shipping: "not running",
                    tables: Vec::new(),
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
        metrics::counter!("capgate_replicated_writes_relayed_locally_total").absolute(load(&c.replicated_writes_relayed_locally));
        for view in &state.replicas {
            let s = view.status();
            let replica = view.replica().to_owned();
            metrics::gauge!("capgate_replica_up", "replica" => replica.clone()).set(if s.state.is_available() { 1.0 } else { 0.0 });
            for st in ["healthy", "suspect", "partitioned", "healing"] {
                metrics::gauge!("capgate_replica_state", "replica" => replica.clone(), "state" => st)
                    .set(if s.state.as_str() == st { 1.0 } else { 0.0 });
            }
            if let Some(rtt) = s.smoothed_rtt {
                metrics::gauge!("capgate_replica_rtt_seconds", "replica" => replica.clone()).set(rtt.as_secs_f64());
            }
            metrics::counter!("capgate_replica_state_changes_total", "replica" => replica).absolute(s.transitions);
        }
    });
    state.handle.render()
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

//! The admin HTTP listener. Data endpoints (`/status`, `/metrics`, `/history`, `/policy`,
//! `/conflicts`) need the bearer token when one is configured; the dashboard's page and
//! assets (`/`, `/dashboard.js`, `/dashboard.css`) hold no data and are served to anyone
//! who can reach the listener — the page then asks for the token and sends it with every
//! data request.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use super::{commands, conflicts, dashboard, metrics, status, AdminState};

fn authorized(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(token) = state.token() else { return true };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| crate::protocol::constant_time_eq(g.as_bytes(), token.as_bytes()))
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "capgate admin: a bearer token is required (admin_token)\n")
        .into_response()
}

/// Answer with `make()` if the request carries the token.
fn guarded(state: &AdminState, headers: &HeaderMap, make: impl FnOnce() -> Response) -> Response {
    if authorized(state, headers) {
        make()
    } else {
        unauthorized()
    }
}

async fn get_status(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    guarded(&state, &headers, || Json(status::status(&state)).into_response())
}

async fn get_metrics(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    guarded(&state, &headers, || ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::text(&state)).into_response())
}

async fn get_history(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    guarded(&state, &headers, || Json(state.history.doc()).into_response())
}

async fn get_policy(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    guarded(&state, &headers, || {
        let policy = state.policy.current();
        let rules: Vec<serde_json::Value> = policy
            .rules
            .iter()
            .map(|r| {
                serde_json::json!({"match": r.pattern_text, "mode": r.mode.name(), "options": commands::mode_options(&r.mode), "line": r.line})
            })
            .collect();
        Json(serde_json::json!({
            "version": policy.version,
            "file": state.config.policy.as_ref().map(|f| f.display().to_string()),
            "default": policy.default.name(),
            "unknown": if policy.unknown == crate::policy::UnknownAction::Relay { "relay" } else { "refuse" },
            "rules": rules,
        }))
        .into_response()
    })
}

/// The value of `name` in a URL query (`a=1&b=2`); names and values here are plain words,
/// so no percent-decoding is needed beyond what a replica name can hold.
fn query_param<'u>(uri: &'u Uri, name: &str) -> Option<&'u str> {
    uri.query()?.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// `/conflicts?limit=N&replica=NAME&unresolved=1`: the listing as JSON.
async fn get_conflicts(State(state): State<Arc<AdminState>>, headers: HeaderMap, uri: Uri) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let limit = query_param(&uri, "limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(20).clamp(1, 1000);
    let unresolved = query_param(&uri, "unresolved") == Some("1");
    let listing = conflicts::list(&state.config, query_param(&uri, "replica"), limit, unresolved).await;
    Json(listing).into_response()
}

/// Serve the admin endpoints on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let app = Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/history", get(get_history))
        .route("/policy", get(get_policy))
        .route("/conflicts", get(get_conflicts))
        .with_state(state);
    tracing::info!(?addr, "admin endpoints: / (dashboard), /status, /metrics, /history, /policy, /conflicts");
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("admin listener failed: {e}");
    }
}

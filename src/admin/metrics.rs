//! `/metrics`: the Prometheus text, its figures set from the views just before rendering.

use std::sync::atomic::{AtomicU64, Ordering};

use super::AdminState;

/// Render the Prometheus text.
pub(super) fn text(state: &AdminState) -> String {
    metrics::with_local_recorder(&state.recorder, || {
        metrics::gauge!("capgate_client_connections").set((state.connections)() as f64);
        metrics::gauge!("capgate_policy_version").set(state.policy.current().version as f64);
        // Live tokio tasks: the main runtime's (accept loop, admin, health, shippers; this
        // handler runs on it) and the session workers' (one per session, plus what it spawns).
        if let Ok(main) = tokio::runtime::Handle::try_current() {
            metrics::gauge!("capgate_tasks", "runtime" => "main").set(main.metrics().num_alive_tasks() as f64);
        }
        let sessions: usize =
            state.session_runtimes.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|h| h.metrics().num_alive_tasks()).sum();
        metrics::gauge!("capgate_tasks", "runtime" => "sessions").set(sessions as f64);
        let c = &state.router.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::counter!("capgate_unknown_statements_total", "action" => "relay").absolute(load(&c.unknown_relayed));
        metrics::counter!("capgate_unknown_statements_total", "action" => "refuse").absolute(load(&c.unknown_refused));
        let limits = &crate::frontend::limits::LIMITS;
        metrics::counter!("capgate_startup_timeouts_total").absolute(load(&limits.startup_timeouts));
        metrics::counter!("capgate_idle_session_timeouts_total").absolute(load(&limits.idle_timeouts));
        metrics::counter!("capgate_sessions_refused_total", "reason" => "max_connections").absolute(load(&limits.over_limit));
        metrics::counter!("capgate_sessions_refused_total", "reason" => "file_descriptors").absolute(load(&limits.no_descriptors));
        metrics::counter!("capgate_accept_errors_total").absolute(load(&limits.accept_errors));
        metrics::counter!("capgate_memory_returned_bytes_total").absolute(load(&crate::frontend::memory::RETURNED_BYTES));
        if let Some(primary) = &state.primary {
            let s = primary.status();
            let up = s.last_heartbeat.is_some() && s.state.is_available();
            metrics::gauge!("capgate_primary_up").set(if up { 1.0 } else { 0.0 });
            if let Some(rtt) = s.smoothed_rtt {
                metrics::gauge!("capgate_primary_rtt_seconds").set(rtt.as_secs_f64());
            }
        }
        if let Some(view) = state.replicas.iter().find_map(|r| r.shipper.as_ref()) {
            super::shipping::fleet_metrics(&*view.fleet);
        }
        for source in &state.replicas {
            let view = &source.health;
            if let Some(ship) = source.shipping() {
                let running = if ship.phase == "running" { 1.0 } else { 0.0 };
                metrics::gauge!("capgate_shipper_running", "replica" => view.replica().to_owned()).set(running);
            }
            let s = view.status();
            let replica = view.replica().to_owned();
            metrics::gauge!("capgate_replica_up", "replica" => replica.clone()).set(if s.state.is_available() { 1.0 } else { 0.0 });
            for st in ["healthy", "suspect", "partitioned", "healing"] {
                let value = if s.state.as_str() == st { 1.0 } else { 0.0 };
                metrics::gauge!("capgate_replica_state", "replica" => replica.clone(), "state" => st).set(value);
            }
            if let Some(rtt) = s.smoothed_rtt {
                metrics::gauge!("capgate_replica_rtt_seconds", "replica" => replica.clone()).set(rtt.as_secs_f64());
            }
            let problems = state.problems_of(&replica).len();
            metrics::gauge!("capgate_replica_config_problems", "replica" => replica.clone()).set(problems as f64);
            metrics::counter!("capgate_replica_state_changes_total", "replica" => replica).absolute(s.transitions);
        }
    });
    state.handle.render()
}

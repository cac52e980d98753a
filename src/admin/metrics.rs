//! `/metrics`: the Prometheus text, its figures set from the views just before rendering.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use super::status::{shipping, tables};
use super::{AdminState, ShipperView};
use crate::policy::Policy;
use crate::replicate::outbox::Phase;

/// Render the Prometheus text.
pub(super) fn text(state: &AdminState) -> String {
    metrics::with_local_recorder(&state.recorder, || {
        metrics::gauge!("capgate_client_connections").set((state.connections)() as f64);
        metrics::gauge!("capgate_policy_version").set(state.policy.current().version as f64);
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
        if let Some(primary) = &state.primary {
            let s = primary.status();
            let up = s.last_heartbeat.is_some() && s.state.is_available();
            metrics::gauge!("capgate_primary_up").set(if up { 1.0 } else { 0.0 });
            if let Some(rtt) = s.smoothed_rtt {
                metrics::gauge!("capgate_primary_rtt_seconds").set(rtt.as_secs_f64());
            }
        }
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

/// The outbox figures of one replica. Lag gauges are only set while known (see the module
/// documentation); a table's gauges go back to 0 once it has nothing pending.
fn shipper_metrics(replica: &str, view: &ShipperView, policy: &Policy, table_gauges: &mut BTreeSet<(String, String)>) {
    let ship = shipping(view);
    let stats = &view.stats;
    let r = replica.to_owned();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
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

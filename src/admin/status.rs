//! The `/status` document: the site, its primary, each replica's health and shipping
//! figures, the policy's version and the client sessions, read at request time from the
//! views the other components publish. Outside tools read it (and `capgate status`, the
//! dashboard and the admin SQL commands are built on it): add fields, never rename them.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{AdminState, ShipperView};
use crate::classify::TableName;
use crate::policy::{Mode, Policy};
use crate::replicate::outbox::{Lag, Phase};
use crate::sites::HealthView;

/// The `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDoc {
    pub site: String,
    pub policy_version: u64,
    pub client_connections: usize,
    /// The site's own primary, as capgate's heartbeat on it sees it.
    pub primary: PrimaryDoc,
    /// Statements whose written tables could not be told, relayed or refused (policy
    /// `unknown`), since start.
    pub unknown_statements: UnknownDoc,
    pub replicas: Vec<ReplicaDoc>,
}

/// The primary in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PrimaryDoc {
    /// host:port (or socket path): never the password.
    pub address: String,
    /// `up` (answering heartbeats), `down` (not reachable: every session fails with 08006)
    /// or `unknown` (not checked yet).
    pub state: &'static str,
    pub rtt_ms: Option<f64>,
    pub state_for_seconds: Option<f64>,
    pub last_error: Option<String>,
}

/// Unknown statements in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownDoc {
    pub relayed: u64,
    pub refused: u64,
}

/// One replica in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaDoc {
    pub name: String,
    /// healthy | suspect | partitioned | healing
    pub state: &'static str,
    pub rtt_ms: Option<f64>,
    pub state_for_seconds: f64,
    pub last_error: Option<String>,
    /// Configuration problems the prerequisite checks found (e.g. `max_prepared_transactions
    /// = 0` with sync tables): such a replica refuses work although its link is fine.
    pub problems: Vec<String>,
    /// Asynchronous replication figures: `null` while unknown (no shipper, or it does not
    /// hold the shipping lock).
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
    pub applied_seq: Option<u64>,
    /// Rows applied per second over the last 10 seconds (`null` until 10 s of history).
    pub drain_rate: Option<f64>,
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
#[derive(Debug, Clone, Serialize)]
pub struct TableDoc {
    pub table: String,
    /// The table's mode under the current policy.
    pub mode: &'static str,
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
}

/// The shipper figures of one replica (None: unknown).
pub(super) struct Shipping {
    pub lag: Option<Lag>,
    pub state: String,
    pub error: Option<String>,
    pub conflicts: u64,
    pub applied_seq: u64,
}

pub(super) fn shipping(view: &ShipperView) -> Shipping {
    let stats = &view.stats;
    let phase = stats.phase();
    let state = match stats.halted() {
        Some(why) => format!("halted: {why}"),
        None => phase.as_str().to_owned(),
    };
    let leading = stats.leader.load(Ordering::Relaxed) && matches!(phase, Phase::ConnectingReplica | Phase::Running | Phase::Halted);
    // A lag not measured yet is unknown (null), not zero: bounded admission treats it as
    // over budget, and /status must not say otherwise.
    let lag = view.lag.borrow().clone();
    Shipping {
        lag: (leading && lag.measured).then_some(lag),
        state,
        error: stats.last_error(),
        conflicts: stats.conflicts.load(Ordering::Relaxed),
        applied_seq: stats.applied_seq.load(Ordering::Relaxed).max(0) as u64,
    }
}

/// The tables to show for one replica: those with pending rows, then those exact rules name.
pub(super) fn tables(policy: &Policy, lag: Option<&Lag>) -> Vec<TableDoc> {
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

fn primary(state: &AdminState) -> PrimaryDoc {
    let address = state.config.primary.url.address();
    let Some(view) = &state.primary else {
        return PrimaryDoc { address, state: "unknown", rtt_ms: None, state_for_seconds: None, last_error: None };
    };
    let s = view.status();
    let label = match (s.state, s.last_heartbeat) {
        (crate::sites::State::Partitioned, _) => "down",
        (_, None) => "unknown",
        _ => "up",
    };
    PrimaryDoc {
        address,
        state: label,
        rtt_ms: s.smoothed_rtt.map(|d| d.as_secs_f64() * 1000.0),
        state_for_seconds: Some(s.in_state().as_secs_f64()),
        last_error: s.last_error.as_deref().map(str::to_owned),
    }
}

fn replica(state: &AdminState, policy: &Policy, view: &HealthView, shipper: Option<&ShipperView>) -> ReplicaDoc {
    let s = view.status();
    let ship = shipper.map(shipping);
    let lag = ship.as_ref().and_then(|x| x.lag.as_ref());
    ReplicaDoc {
        name: view.replica().to_owned(),
        state: s.state.as_str(),
        rtt_ms: s.smoothed_rtt.map(|d| d.as_secs_f64() * 1000.0),
        state_for_seconds: s.in_state().as_secs_f64(),
        last_error: s.last_error.as_deref().map(str::to_owned),
        problems: state.problems_of(view.replica()),
        lag_seconds: lag.map(Lag::seconds),
        pending_rows: lag.map(|l| l.pending_rows),
        applied_seq: lag.and(ship.as_ref().map(|x| x.applied_seq)),
        drain_rate: state.history.drain_rate(view.replica()),
        conflicts: ship.as_ref().map(|x| x.conflicts),
        shipping: ship.as_ref().map_or_else(|| "not running".to_owned(), |x| x.state.clone()),
        shipping_error: ship.as_ref().and_then(|x| x.error.clone()),
        tables: tables(policy, lag),
    }
}

/// The document as of now.
pub fn status(state: &AdminState) -> StatusDoc {
    let policy = state.policy.current();
    let c = &state.router.counters;
    StatusDoc {
        site: state.site().to_owned(),
        policy_version: policy.version,
        client_connections: (state.connections)(),
        primary: primary(state),
        unknown_statements: UnknownDoc {
            relayed: c.unknown_relayed.load(Ordering::Relaxed),
            refused: c.unknown_refused.load(Ordering::Relaxed),
        },
        replicas: state.replicas.iter().map(|source| replica(state, &policy, &source.health, source.shipper.as_ref())).collect(),
    }
}

//! The `/status` document: the site, its primary, each replica's health and shipping
//! figures, the policy's version and the client sessions, read at request time from the
//! views the other components publish. Outside tools read it (and `capgate status`, the
//! dashboard and the admin SQL commands are built on it): add fields, never rename them.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::shipping::ShippingDoc;
use super::{AdminState, ReplicaSource};
use crate::classify::TableName;
use crate::policy::{Mode, Policy};
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
    /// Asynchronous replication figures, read from the primary by every capgate process:
    /// `null` while unknown (not measured yet, the primary out of reach).
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
    /// The primary snapshot up to which the replica has applied every change.
    pub applied_snapshot: Option<String>,
    /// The statement outbox's position of the first replication core: always `null` now.
    pub applied_seq: Option<u64>,
    /// Rows applied per second over the last 10 seconds (`null` until 10 s of history).
    pub drain_rate: Option<f64>,
    /// Conflicts this process's shipper met since it started (`null`: no shipper).
    pub conflicts: Option<u64>,
    /// `not running` (no shipper) | `connecting` (to the primary) | `standby` (another
    /// process ships) | `connecting to the replica` | `running` | `copying` | `partitioned`,
    /// followed by `, N table(s) halted` when some are.
    pub shipping: String,
    /// The shipper's last error, if any (it retries by itself).
    pub shipping_error: Option<String>,
    /// Tables with pending rows, tables the replica knows, and tables named (without
    /// wildcards) by non-local policy rules.
    pub tables: Vec<TableDoc>,
    /// Everything the shipper to this replica publishes (`null`: no replication here).
    pub shipper: Option<ShippingDoc>,
}

/// One table of one replica in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct TableDoc {
    pub table: String,
    /// The table's mode under the current policy.
    pub mode: &'static str,
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
    /// On this replica: `copying` | `copied` | `halted` | `unknown` (`null`: not shipped
    /// from this process).
    pub state: Option<&'static str>,
    /// Halted: the exact error, and the command that resumes it.
    pub error: Option<String>,
    pub resume: Option<String>,
    /// Copying: rows copied so far.
    pub copied_rows: Option<u64>,
}

/// The tables to show for one replica: those the shipper knows (pending changes or a state on
/// the replica), then those exact non-local rules name.
pub(super) fn tables(policy: &Policy, ship: Option<&ShippingDoc>) -> Vec<TableDoc> {
    let mut names: BTreeSet<String> = ship.map(|s| s.tables.iter().map(|t| t.table.clone()).collect()).unwrap_or_default();
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
            let known = ship.and_then(|s| s.tables.iter().find(|t| t.table == table));
            let lag_known = ship.is_some_and(|s| s.lag_seconds.is_some());
            TableDoc {
                mode,
                lag_seconds: known.and_then(|t| t.lag_seconds).or(lag_known.then_some(0.0)),
                pending_rows: known.and_then(|t| t.pending_rows).or(lag_known.then_some(0)),
                state: known.map(|t| t.state),
                error: known.and_then(|t| t.error.clone()),
                resume: known.and_then(|t| t.resume.clone()),
                copied_rows: known.and_then(|t| t.copied_rows),
                table,
            }
        })
        .collect()
}

/// `running`, `copying` … and how many tables are halted.
fn shipping_state(doc: &ShippingDoc) -> String {
    let halted = doc.tables.iter().filter(|t| t.state == "halted").count();
    match halted {
        0 => doc.phase.to_owned(),
        n => format!("{}, {n} table(s) halted", doc.phase),
    }
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

fn replica(state: &AdminState, policy: &Policy, source: &ReplicaSource) -> ReplicaDoc {
    let view: &HealthView = &source.health;
    let s = view.status();
    let ship = source.shipping();
    ReplicaDoc {
        name: view.replica().to_owned(),
        state: s.state.as_str(),
        rtt_ms: s.smoothed_rtt.map(|d| d.as_secs_f64() * 1000.0),
        state_for_seconds: s.in_state().as_secs_f64(),
        last_error: s.last_error.as_deref().map(str::to_owned),
        problems: state.problems_of(view.replica()),
        lag_seconds: ship.as_ref().and_then(|x| x.lag_seconds),
        pending_rows: ship.as_ref().and_then(|x| x.pending_rows),
        applied_snapshot: ship.as_ref().and_then(|x| x.applied_snapshot.clone()),
        applied_seq: None,
        drain_rate: state.history.drain_rate(view.replica()),
        conflicts: ship.as_ref().map(|x| x.conflicts),
        shipping: ship.as_ref().map_or_else(|| "not running".to_owned(), shipping_state),
        shipping_error: ship.as_ref().and_then(|x| x.last_error.clone()),
        tables: tables(policy, ship.as_ref()),
        shipper: ship,
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
        replicas: state.replicas.iter().map(|source| replica(state, &policy, source)).collect(),
    }
}

//! What `/status` and `/metrics` show of the row-image shipper of one replica
//! ([`crate::replicate::shipper`]): its phase and counters, the lag per table (from the lag
//! monitor every process runs, so processes that do not ship show it too), and each table's
//! state on the replica — copying (with rows copied so far), copied, or halted with the exact
//! error and how to resume it.
//!
//! Additive: the replica documents keep their fields; a front end that runs a [`Fleet`] adds
//! [`ShippingDoc`] under `shipper` and calls [`fleet_metrics`].

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::replicate::shipper::mysql::{LateFleet, MyFleet};
use crate::replicate::shipper::{Fleet, Lag, ShipperHandle, TableState};

/// What the admin views read of a process's shippers, whichever database they ship to: the
/// PostgreSQL [`Fleet`] and the MySQL [`MyFleet`] both answer it.
pub trait Shippers: Send + Sync {
    /// The shipper of `replica` running in this process, if any.
    fn shipper(&self, replica: &str) -> Option<&ShipperHandle>;
    /// `replica`'s lag as the lag monitor last read it (None: unknown).
    fn lag(&self, replica: &str) -> Option<Lag>;
    /// The replicas with a shipper in this process.
    fn replicas(&self) -> Vec<&str>;
    /// Whether shippers run in this process at all (a MySQL fleet may start after a policy
    /// reload; until then the views show no shipper, as without replication).
    fn running(&self) -> bool {
        true
    }
}

impl Shippers for Fleet {
    fn shipper(&self, replica: &str) -> Option<&ShipperHandle> {
        self.shippers.get(replica).map(|s| &**s)
    }
    fn lag(&self, replica: &str) -> Option<Lag> {
        Fleet::lag(self, replica)
    }
    fn replicas(&self) -> Vec<&str> {
        self.shippers.keys().map(String::as_str).collect()
    }
}

impl Shippers for MyFleet {
    fn shipper(&self, replica: &str) -> Option<&ShipperHandle> {
        self.shippers.get(replica).map(|s| &**s)
    }
    fn lag(&self, replica: &str) -> Option<Lag> {
        self.lag.lag(replica)
    }
    fn replicas(&self) -> Vec<&str> {
        self.shippers.keys().map(String::as_str).collect()
    }
}

impl Shippers for LateFleet {
    fn shipper(&self, replica: &str) -> Option<&ShipperHandle> {
        self.get().and_then(|f| Shippers::shipper(&**f, replica))
    }
    fn lag(&self, replica: &str) -> Option<Lag> {
        self.get().and_then(|f| f.lag.lag(replica))
    }
    fn replicas(&self) -> Vec<&str> {
        self.get().map(|f| Shippers::replicas(&**f)).unwrap_or_default()
    }
    fn running(&self) -> bool {
        self.get().is_some()
    }
}

/// One replica's shipper in `/status` (`replicas[].shipper`).
#[derive(Debug, Clone, Serialize)]
pub struct ShippingDoc {
    /// connecting | standby (another process ships) | connecting to the replica | running |
    /// copying | partitioned | not running (no shipper in this process).
    pub phase: &'static str,
    /// Whether this process holds the shipping lock.
    pub leader: bool,
    /// The primary snapshot the replica has applied up to.
    pub applied_snapshot: Option<String>,
    pub ranges: u64,
    pub changes: u64,
    /// Replica round trips that carried changes.
    pub batches: u64,
    pub conflicts: u64,
    pub retries: u64,
    pub last_error: Option<String>,
    /// From the primary (`null` while unknown).
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
    /// Tables with pending changes or a state on the replica.
    pub tables: Vec<ShippedTableDoc>,
}

/// One table of one replica's shipper.
#[derive(Debug, Clone, Serialize)]
pub struct ShippedTableDoc {
    pub table: String,
    /// copying | copied | halted | unknown (not copied yet, or a sync table's writes made
    /// around capgate).
    pub state: &'static str,
    /// Halted: the exact error, and what to do.
    pub error: Option<String>,
    pub resume: Option<String>,
    /// Copying: rows copied so far.
    pub copied_rows: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
    /// Row changes of this table this process applied.
    pub changes: u64,
}

/// The document of `replica`'s shipper.
pub fn shipping_doc(fleet: &dyn Shippers, replica: &str) -> ShippingDoc {
    let lag = fleet.lag(replica);
    let Some(shipper) = fleet.shipper(replica) else {
        return ShippingDoc {
            phase: "not running",
            leader: false,
            applied_snapshot: None,
            ranges: 0,
            changes: 0,
            batches: 0,
            conflicts: 0,
            retries: 0,
            last_error: None,
            lag_seconds: lag.as_ref().map(|l| l.seconds()),
            pending_rows: lag.as_ref().map(|l| l.pending_rows),
            tables: Vec::new(),
        };
    };
    let stats = shipper.stats();
    let states = stats.tables();
    let changes = stats.changes_by_table.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut names: BTreeSet<String> = states.keys().cloned().collect();
    if let Some(l) = &lag {
        names.extend(l.tables.keys().cloned());
    }
    let tables = names
        .into_iter()
        .map(|table| {
            let state = states.get(&table);
            let halted = state.is_some_and(|s| s.state == TableState::Halted);
            ShippedTableDoc {
                state: state.map_or("unknown", |s| s.state.as_str()),
                error: state.and_then(|s| s.error.clone()),
                resume: halted.then(|| {
                    // A writing site's table is adopted, not copied again (decision 0028).
                    let adopt = crate::replicate::shipper::copy::adopt_command(replica, &table);
                    match state.and_then(|s| s.error.as_deref()).is_some_and(|e| e.ends_with(&adopt)) {
                        true => adopt,
                        false => format!("capgate resume --replica {replica} --table {table}"),
                    }
                }),
                copied_rows: state.filter(|s| s.state == TableState::Copying).and_then(|s| s.copied_rows),
                lag_seconds: lag.as_ref().map(|l| l.table(&table).seconds()),
                pending_rows: lag.as_ref().map(|l| l.table(&table).pending_rows),
                changes: changes.get(&table).copied().unwrap_or(0),
                table,
            }
        })
        .collect();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    ShippingDoc {
        phase: stats.phase().as_str(),
        leader: stats.leader.load(Ordering::Relaxed),
        applied_snapshot: stats.applied_snapshot(),
        ranges: load(&stats.ranges),
        changes: load(&stats.changes),
        batches: load(&stats.batches),
        conflicts: load(&stats.conflicts),
        retries: load(&stats.retries),
        last_error: stats.last_error(),
        lag_seconds: lag.as_ref().map(|l| l.seconds()),
        pending_rows: lag.as_ref().map(|l| l.pending_rows),
        tables,
    }
}

/// Sets the shipper's figures in the current recorder: `capgate_shipped_changes_total`,
/// `capgate_shipped_ranges_total`, `capgate_shipped_batches_total`,
/// `capgate_shipper_retries_total`, `capgate_conflicts_total{replica,table,kind}`,
/// `capgate_shipper_leader`, `capgate_table_halted{replica,table}`,
/// `capgate_table_copied_rows{replica,table}` (while copying), and, while known,
/// `capgate_shipper_lag_seconds` / `capgate_shipper_pending_changes` per replica and
/// `capgate_replica_lag_seconds` / `capgate_replica_pending_rows` per replica and table.
pub fn fleet_metrics(fleet: &dyn Shippers) {
    for replica in fleet.replicas() {
        let Some(shipper) = fleet.shipper(replica) else { continue };
        let r = replica.to_owned();
        let stats = shipper.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        metrics::counter!("capgate_shipped_changes_total", "replica" => r.clone()).absolute(load(&stats.changes));
        metrics::counter!("capgate_shipped_ranges_total", "replica" => r.clone()).absolute(load(&stats.ranges));
        metrics::counter!("capgate_shipped_batches_total", "replica" => r.clone()).absolute(load(&stats.batches));
        metrics::counter!("capgate_shipper_retries_total", "replica" => r.clone()).absolute(load(&stats.retries));
        metrics::gauge!("capgate_shipper_leader", "replica" => r.clone()).set(if stats.leader.load(Ordering::Relaxed) { 1.0 } else { 0.0 });
        for ((table, kind), n) in stats.conflicts_by_table() {
            metrics::counter!("capgate_conflicts_total", "replica" => r.clone(), "table" => table, "kind" => kind).absolute(n);
        }
        for (table, s) in stats.tables() {
            let halted = if s.state == TableState::Halted { 1.0 } else { 0.0 };
            metrics::gauge!("capgate_table_halted", "replica" => r.clone(), "table" => table.clone()).set(halted);
            if let (TableState::Copying, Some(rows)) = (s.state, s.copied_rows) {
                metrics::gauge!("capgate_table_copied_rows", "replica" => r.clone(), "table" => table).set(rows as f64);
            }
        }
        if let Some(lag) = fleet.lag(replica) {
            metrics::gauge!("capgate_shipper_lag_seconds", "replica" => r.clone()).set(lag.seconds());
            metrics::gauge!("capgate_shipper_pending_changes", "replica" => r.clone()).set(lag.pending_rows as f64);
            // Every known table (with a state on the replica, pending changes, or changes
            // shipped), so a table that caught up goes back to 0.
            let mut tables: BTreeSet<String> = stats.tables().into_keys().collect();
            tables.extend(lag.tables.keys().cloned());
            tables.extend(stats.changes_by_table.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned());
            for table in tables {
                let t = lag.table(&table);
                metrics::gauge!("capgate_replica_lag_seconds", "replica" => r.clone(), "table" => table.clone()).set(t.seconds());
                metrics::gauge!("capgate_replica_pending_rows", "replica" => r.clone(), "table" => table).set(t.pending_rows as f64);
            }
        }
    }
}

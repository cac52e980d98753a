//! Recording a conflict a shipper met, whatever the replica's database: the shipper's
//! counters, a warning in the log, and a line in the JSON-lines conflict log with the old and
//! new images and the replica's row.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::ShipperStats;
use crate::replicate::apply::Conflict;

/// Counts `c` in `stats` and appends it to `log` (when configured) as one JSON line.
pub fn record(stats: &ShipperStats, replica: &str, log: Option<&Path>, c: &Conflict) {
    stats.conflicts.fetch_add(1, Ordering::Relaxed);
    *stats.conflicts_by_table.lock().unwrap_or_else(|p| p.into_inner()).entry((c.tbl.clone(), c.kind.clone())).or_insert(0) += 1;
    let mut record = serde_json::to_value(c).unwrap_or_default();
    if let Some(obj) = record.as_object_mut() {
        obj.insert("replica".into(), replica.into());
        obj.insert("replica_row".into(), c.replica.clone().unwrap_or_default());
        obj.insert("logged_at".into(), unix_now().into());
    }
    tracing::warn!(replica = %replica, table = %c.tbl, kind = %c.kind, resolution = %c.resolution, "shipper: conflict");
    if let Some(path) = log {
        let written = std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| writeln!(f, "{record}"));
        if let Err(e) = written {
            tracing::error!("shipper: cannot append to the conflict log {}: {e}", path.display());
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

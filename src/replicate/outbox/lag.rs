//! How far a replica is behind its origin's outbox, per replica and per table.
//!
//! The shipper publishes a [`Lag`] through a watch channel: the bounded mode and the admin
//! endpoint read the latest value without a query. It stores the commit time of the oldest
//! record not yet applied rather than a number of seconds, so the seconds keep growing
//! between two refreshes (a shipper cut off from the replica still refreshes from the
//! primary, but a reader must not depend on that).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;

/// Lag of one table at one replica.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableLag {
    /// Outbox rows writing this table not yet applied.
    pub pending_rows: u64,
    /// Commit time (Unix seconds, the primary's clock) of the oldest of them.
    pub oldest_pending: Option<f64>,
}

impl TableLag {
    /// Now minus the oldest pending commit; 0 when nothing is pending.
    pub fn seconds(&self) -> f64 {
        seconds_since(self.oldest_pending)
    }
}

/// Lag of one replica: totals and per table (`schema.table`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lag {
    /// Outbox rows not yet applied (a row writing two tables counts once here).
    pub pending_rows: u64,
    /// Commit time (Unix seconds) of the oldest record not yet applied.
    pub oldest_pending: Option<f64>,
    /// The replica's watermark the figures were computed against.
    pub applied_seq: i64,
    /// Only tables with pending rows appear.
    pub tables: BTreeMap<String, TableLag>,
    /// False until a shipper has measured it (the default value means "not known yet").
    pub measured: bool,
}

impl Lag {
    /// Now minus the commit time of the oldest record not yet applied; 0 when caught up.
    pub fn seconds(&self) -> f64 {
        seconds_since(self.oldest_pending)
    }

    /// The lag of `table` (zero when it has nothing pending).
    pub fn table(&self, table: &str) -> TableLag {
        self.tables.get(table).cloned().unwrap_or_default()
    }

    /// Caught up at `applied_seq`.
    pub fn caught_up(applied_seq: i64) -> Lag {
        Lag { applied_seq, measured: true, ..Lag::default() }
    }
}

fn seconds_since(oldest: Option<f64>) -> f64 {
    let Some(oldest) = oldest else { return 0.0 };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    (now - oldest).max(0.0)
}

const TOTAL_SQL: &str = "SELECT count(*), extract(epoch FROM min(committed_at))::float8 FROM capgate.outbox \
     WHERE origin = $1 AND seq > $2";
const PER_TABLE_SQL: &str = "SELECT t, count(*), extract(epoch FROM min(committed_at))::float8 \
     FROM capgate.outbox, unnest(tables) AS t WHERE origin = $1 AND seq > $2 GROUP BY t";

/// Computes the lag of a replica whose watermark for `origin` is `applied_seq`, from the
/// primary's outbox (two index range scans over the pending rows only).
pub async fn measure(primary: &Client, origin: &str, applied_seq: i64) -> Result<Lag, tokio_postgres::Error> {
    let total = primary.query_one(TOTAL_SQL, &[&origin, &applied_seq]).await?;
    let pending: i64 = total.get(0);
    if pending == 0 {
        return Ok(Lag::caught_up(applied_seq));
    }
    let mut tables = BTreeMap::new();
    for row in primary.query(PER_TABLE_SQL, &[&origin, &applied_seq]).await? {
        let n: i64 = row.get(1);
        tables.insert(row.get(0), TableLag { pending_rows: n.max(0) as u64, oldest_pending: row.get(2) });
    }
    Ok(Lag { measured: true, pending_rows: pending.max(0) as u64, oldest_pending: total.get(1), applied_seq, tables })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_grow_from_the_oldest_pending_commit() {
        assert_eq!(Lag::caught_up(5).seconds(), 0.0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let lag = Lag { pending_rows: 1, oldest_pending: Some(now - 10.0), ..Lag::default() };
        assert!(lag.seconds() >= 10.0 && lag.seconds() < 60.0);
        assert_eq!(lag.table("public.t"), TableLag::default());
    }
}

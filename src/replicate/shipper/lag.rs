//! How far each replica is behind, per table, computed from the primary alone: the changes
//! in `capgate.changes` not visible in the snapshot the replica last applied (the shipper
//! records it in `capgate.shipped_snapshots` after each range). Any capgate process in front
//! of the primary can compute it, so bounded admission works on processes that do not ship.
//!
//! A [`LagMonitor`] refreshes every replica's figures every ~250 ms into a map read without a
//! query. It stores the capture time of the oldest pending change rather than seconds, so the
//! seconds keep growing between refreshes (and while the primary cannot be read).
//!
//! The query reads every pending change, so its cost grows with the backlog (about 0.6 µs a
//! pending row: 50 ms at 80,000 rows, and seconds on a primary short of CPU). Run every
//! 250 ms against a large backlog it would take a good part of a backend just when the
//! primary is busiest, and slow the very shipping that would shrink the backlog; so the
//! monitor waits [`BUSY_FACTOR`] times as long as its last query took before the next, up to
//! [`MAX_PAUSE`] — except after a refresh that found nothing pending (a figure of 0 would not
//! grow while a new backlog does). A figure read late with something pending only overstates
//! the lag: the oldest pending change keeps ageing until the next refresh.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;

use crate::backend::postgres::Upstream;
use crate::sites::AbortOnDrop;

/// Lag of one table at one replica.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableLag {
    /// Row changes of this table not yet applied.
    pub pending_rows: u64,
    /// Capture time (Unix seconds, the primary's clock) of the oldest of them.
    pub oldest_pending: Option<f64>,
}

impl TableLag {
    /// Now minus the oldest pending change; 0 when nothing is pending.
    pub fn seconds(&self) -> f64 {
        seconds_since(self.oldest_pending)
    }
}

/// Lag of one replica: totals and per table (as the capture names tables).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lag {
    /// Row changes not yet applied.
    pub pending_rows: u64,
    /// Capture time (Unix seconds) of the oldest change not yet applied.
    pub oldest_pending: Option<f64>,
    /// The replica's applied snapshot the figures were computed against.
    pub applied_snapshot: Option<String>,
    /// Only tables with pending changes appear.
    pub tables: BTreeMap<String, TableLag>,
    /// False until measured (the default value means "not known": a replica that has never
    /// applied a range, or a primary that could not be read).
    pub measured: bool,
}

impl Lag {
    /// Now minus the capture time of the oldest pending change; 0 when caught up.
    pub fn seconds(&self) -> f64 {
        seconds_since(self.oldest_pending)
    }

    /// The lag of `table` (zero when it has nothing pending).
    pub fn table(&self, table: &str) -> TableLag {
        self.tables.get(table).cloned().unwrap_or_default()
    }
}

fn seconds_since(oldest: Option<f64>) -> f64 {
    let Some(oldest) = oldest else { return 0.0 };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    (now - oldest).max(0.0)
}

/// Per replica and table: the pending changes after the replica's shipped snapshot (an index
/// range scan on `xid` over the pending changes only).
const MEASURE_SQL: &str = "SELECT s.replica, s.snapshot::text, c.tbl, count(c.seq), extract(epoch FROM min(c.at))::float8 \
     FROM capgate.shipped_snapshots s LEFT JOIN capgate.changes c \
     ON c.xid >= pg_snapshot_xmin(s.snapshot) AND NOT pg_visible_in_snapshot(c.xid, s.snapshot) \
     WHERE s.replica = ANY ($1) GROUP BY s.replica, s.snapshot::text, c.tbl";

/// Measures every replica of `replicas` that has applied a range; the others are absent.
pub async fn measure(primary: &Client, replicas: &[String]) -> Result<BTreeMap<String, Lag>, tokio_postgres::Error> {
    let mut out: BTreeMap<String, Lag> = BTreeMap::new();
    for row in primary.query(MEASURE_SQL, &[&replicas]).await? {
        let replica: String = row.try_get(0)?;
        let lag = out.entry(replica).or_insert_with(|| Lag { measured: true, ..Lag::default() });
        lag.applied_snapshot = row.try_get(1)?;
        let Some(table) = row.try_get::<_, Option<String>>(2)? else { continue };
        let n = row.try_get::<_, i64>(3)?.max(0) as u64;
        let oldest: Option<f64> = row.try_get(4)?;
        lag.pending_rows += n;
        lag.oldest_pending = match (lag.oldest_pending, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        lag.tables.insert(table, TableLag { pending_rows: n, oldest_pending: oldest });
    }
    Ok(out)
}

/// Every replica's lag, refreshed in the background; cheap to read.
pub struct LagMonitor {
    lags: Arc<RwLock<BTreeMap<String, Lag>>>,
    _task: AbortOnDrop<()>,
}

/// Between refreshes the monitor pauses this many times as long as its last query took...
const BUSY_FACTOR: u32 = 3;

/// ...but never longer than this (figures go stale no more than a query plus this).
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The `application_name` of the monitor's primary connection.
const APPLICATION_NAME: &str = "capgate lag";

impl LagMonitor {
    /// Starts refreshing the lag of `replicas` from `primary` every `interval` (each query
    /// bounded by `deadline`). A replica is absent until it has been measured; after a failed
    /// refresh every figure is dropped (unknown), never kept as if current.
    pub fn start(primary: Upstream, replicas: Vec<String>, interval: Duration, deadline: Duration) -> LagMonitor {
        let lags = Arc::new(RwLock::new(BTreeMap::new()));
        let task = tokio::spawn(refresh(primary, replicas, interval, deadline, lags.clone()));
        LagMonitor { lags, _task: AbortOnDrop(task) }
    }

    /// The latest lag of `replica` (None: not known).
    pub fn lag(&self, replica: &str) -> Option<Lag> {
        self.lags.read().unwrap_or_else(|p| p.into_inner()).get(replica).cloned()
    }

    /// Changes of `table` not yet applied on some replica (mode changes: a table moving from
    /// async to sync admits sync writes only once this is 0). None: some replica's lag is not
    /// known.
    pub fn pending(&self, table: &str, replicas: &[String]) -> Option<u64> {
        let lags = self.lags.read().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        for r in replicas {
            total += lags.get(r)?.table(table).pending_rows;
        }
        Some(total)
    }
}

async fn refresh(
    primary: Upstream,
    replicas: Vec<String>,
    interval: Duration,
    deadline: Duration,
    lags: Arc<RwLock<BTreeMap<String, Lag>>>,
) {
    let mut conn: Option<(Client, AbortOnDrop<()>)> = None;
    let mut failing = false;
    // Whether the last refresh found nothing pending anywhere.
    let mut idle = true;
    loop {
        if conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            conn = None;
        }
        if conn.is_none() {
            if let Ok(Ok((client, task))) = tokio::time::timeout(deadline, primary.client_with_task(APPLICATION_NAME)).await {
                conn = Some((client, AbortOnDrop(task)));
            }
        }
        let started = tokio::time::Instant::now();
        let measured = match &conn {
            Some((client, _)) => tokio::time::timeout(deadline, measure(client, &replicas)).await.ok().and_then(|r| r.ok()),
            None => None,
        };
        let took = started.elapsed();
        match measured {
            Some(m) => {
                idle = m.values().all(|l| l.pending_rows == 0);
                if failing {
                    tracing::info!("lag: measuring from the primary again");
                    failing = false;
                }
                *lags.write().unwrap_or_else(|p| p.into_inner()) = m;
            }
            None => {
                if !failing {
                    tracing::warn!("lag: cannot measure replication lag on the primary; every lag is unknown until it can");
                    failing = true;
                }
                conn = None;
                lags.write().unwrap_or_else(|p| p.into_inner()).clear();
            }
        }
        tokio::time::sleep(pause(interval, took, idle)).await;
    }
}

/// The pause after a refresh that took `took`: `interval`, or longer after an expensive query
/// — but never after one that found nothing pending, since a figure of 0 would not grow while
/// a new backlog does.
fn pause(interval: Duration, took: Duration, idle: bool) -> Duration {
    if idle {
        interval
    } else {
        interval.max((took * BUSY_FACTOR).min(MAX_PAUSE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_grow_from_the_oldest_pending_change() {
        assert_eq!(Lag::default().seconds(), 0.0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let lag = Lag { pending_rows: 1, oldest_pending: Some(now - 10.0), ..Lag::default() };
        assert!(lag.seconds() >= 10.0 && lag.seconds() < 60.0);
        assert_eq!(lag.table("public.t"), TableLag::default());
    }

    #[test]
    fn an_expensive_refresh_waits_longer_unless_nothing_was_pending() {
        let (interval, ms) = (Duration::from_millis(250), Duration::from_millis);
        assert_eq!(pause(interval, ms(10), false), interval);
        assert_eq!(pause(interval, ms(200), false), ms(600));
        assert_eq!(pause(interval, ms(5000), false), MAX_PAUSE);
        assert_eq!(pause(interval, ms(5000), true), interval);
    }
}

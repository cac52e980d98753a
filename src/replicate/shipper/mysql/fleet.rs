//! Every MySQL shipper of one capgate process (one per replica) and the lag monitor every
//! process runs: what the MySQL front end holds for async and bounded tables. Lag is read
//! from the primary (each replica's position in `capgate.shipped`, the changes it does not
//! cover), so bounded admission works on processes that do not ship.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use super::{lag_of, MyShipper, MyShipperConfig};
use crate::config::{Config, DbUrl};
use crate::policy::PolicyHandle;
use crate::replicate::shipper::fleet::{on_conflict, LAG_REFRESH};
use crate::replicate::shipper::Lag;
use crate::sites::{AbortOnDrop, HealthView};
use crate::store::mysql::{ship, xa};

/// The shippers and the lag monitor of one process.
pub struct MyFleet {
    /// By replica name.
    pub shippers: HashMap<String, MyShipper>,
    pub lag: MyLagMonitor,
    replicas: Vec<String>,
}

impl MyFleet {
    /// Starts one shipper per replica of `config` (`health(name)` gives it the replica's
    /// health view) and the lag monitor; nothing here waits on a database.
    pub fn start(config: &Config, policy: Arc<PolicyHandle>, health: impl Fn(&str) -> Option<HealthView>) -> MyFleet {
        let replicas: Vec<String> = config.replicas.iter().map(|r| r.name.clone()).collect();
        let mut shippers = HashMap::new();
        for r in &config.replicas {
            let mut c = MyShipperConfig::new(&config.site, &r.name, config.primary.url.clone(), r.url.clone());
            c.all_replicas = replicas.clone();
            c.conflict_log = config.conflict_log.clone();
            let policy = policy.clone();
            let copies = policy.clone();
            c.on_conflict = Arc::new(move |table: &str| on_conflict(&policy, table));
            c.copies = Arc::new(move |table: &str| {
                let mode = crate::classify::TableName::parse(table).map(|t| copies.current().decide_table(&t).mode);
                matches!(mode, Some(crate::policy::Mode::Async { .. } | crate::policy::Mode::Bounded { .. }))
            });
            c.health = health(&r.name);
            c.replica_takes_writes = r.takes_writes;
            c.ship_interval = r.ship_interval;
            shippers.insert(r.name.clone(), super::start(c));
        }
        let lag = MyLagMonitor::start(config.primary.url.clone(), replicas.clone(), LAG_REFRESH, Duration::from_secs(10));
        MyFleet { shippers, lag, replicas }
    }

    /// The first replica on which `table`'s oldest pending change is older than `max_lag`,
    /// with that age in seconds (infinite when the lag is not known).
    pub fn over_budget(&self, table: &str, max_lag: Duration) -> Option<(String, f64)> {
        self.replicas.iter().find_map(|r| match self.lag.lag(r) {
            None => Some((r.clone(), f64::INFINITY)),
            Some(l) => {
                let s = l.table(table).seconds();
                (s > max_lag.as_secs_f64()).then(|| (r.clone(), s))
            }
        })
    }

    /// Tell every shipper that new changes committed.
    pub fn wake(&self) {
        for s in self.shippers.values() {
            s.wake();
        }
    }
}

/// The fleet of a process whose policy may gain its first async or bounded rule while it
/// runs: started at start when the policy ships, or later, after a policy reload, once the
/// capture triggers match the new policy (never stopped: with no such rule left the shippers
/// find nothing to ship). The front end and the admin views hold this, not the fleet, so a
/// fleet started later is seen by every session and view at once.
#[derive(Default)]
pub struct LateFleet(OnceLock<Arc<MyFleet>>);

impl LateFleet {
    /// The fleet, once started.
    pub fn get(&self) -> Option<&Arc<MyFleet>> {
        self.0.get()
    }

    /// The fleet, started by `start` if it was not running; `true` when this call started it.
    pub fn start_with(&self, start: impl FnOnce() -> MyFleet) -> (&Arc<MyFleet>, bool) {
        let mut started = false;
        let fleet = self.0.get_or_init(|| {
            started = true;
            Arc::new(start())
        });
        (fleet, started)
    }
}

/// Every replica's lag, refreshed in the background; cheap to read.
pub struct MyLagMonitor {
    lags: Arc<RwLock<BTreeMap<String, Lag>>>,
    _task: AbortOnDrop<()>,
}

impl MyLagMonitor {
    /// Refreshes the lag of `replicas` from `primary` every `interval`. A replica is absent
    /// until its shipper has recorded a position; after a failed refresh every figure is
    /// dropped (unknown), never kept as if current.
    pub fn start(primary: DbUrl, replicas: Vec<String>, interval: Duration, deadline: Duration) -> MyLagMonitor {
        let lags = Arc::new(RwLock::new(BTreeMap::new()));
        let task = tokio::spawn(refresh(primary, replicas, interval, deadline, lags.clone()));
        MyLagMonitor { lags, _task: AbortOnDrop(task) }
    }

    /// The latest lag of `replica` (None: not known).
    pub fn lag(&self, replica: &str) -> Option<Lag> {
        self.lags.read().unwrap_or_else(|p| p.into_inner()).get(replica).cloned()
    }
}

async fn measure(conn: &mut mysql_async::Conn, replicas: &[String]) -> Result<BTreeMap<String, Lag>, ship::ShipError> {
    let mut out = BTreeMap::new();
    for (replica, pos) in ship::shipped(conn).await? {
        if replicas.contains(&replica) {
            let pending = ship::pending(conn, &pos).await?;
            out.insert(replica, lag_of(&pos, pending));
        }
    }
    Ok(out)
}

async fn refresh(primary: DbUrl, replicas: Vec<String>, interval: Duration, deadline: Duration, lags: Arc<RwLock<BTreeMap<String, Lag>>>) {
    let mut conn: Option<mysql_async::Conn> = None;
    loop {
        if conn.is_none() {
            conn = tokio::time::timeout(deadline, xa::connect(&primary)).await.ok().and_then(|c| c.ok());
        }
        let measured = match conn.as_mut() {
            Some(c) => tokio::time::timeout(deadline, measure(c, &replicas)).await.ok().and_then(|r| r.ok()),
            None => None,
        };
        match measured {
            Some(m) => *lags.write().unwrap_or_else(|p| p.into_inner()) = m,
            None => {
                conn = None;
                lags.write().unwrap_or_else(|p| p.into_inner()).clear();
            }
        }
        tokio::time::sleep(interval).await;
    }
}

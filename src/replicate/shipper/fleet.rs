//! Every shipper of one capgate process (one per configured replica) and the lag monitor
//! every process runs, started together from the configuration: what a front end's
//! replication state holds for async and bounded tables.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Lag, LagMonitor, Shipper, ShipperConfig};
use crate::backend::postgres::Upstream;
use crate::classify::TableName;
use crate::config::Config;
use crate::policy::{Mode, OnConflict, PolicyHandle, DEFAULT_ON_CONFLICT};
use crate::sites::HealthView;

/// How often every process refreshes the lag map (bounded admission reads it).
pub const LAG_REFRESH: Duration = Duration::from_millis(250);

/// The shippers and the lag monitor of one process.
pub struct Fleet {
    /// By replica name.
    pub shippers: HashMap<String, Shipper>,
    /// Lag per replica and table, from the primary (also on processes whose shippers do not
    /// hold the shipping lock).
    pub lag: LagMonitor,
    replicas: Vec<String>,
    /// The policy the shippers read; admission asks it whether sync commits are streamed.
    policy: Arc<PolicyHandle>,
}

impl Fleet {
    /// Starts one shipper per replica of `config` (each waits for its lock, copies tables,
    /// ships; `health(name)` gives it the replica's health view) and the lag monitor. Fails
    /// only when a URL's TLS settings cannot be loaded; nothing here waits on a database.
    pub fn start(
        config: &Config,
        policy: Arc<PolicyHandle>,
        health: impl Fn(&str) -> Option<HealthView>,
        deadline: Duration,
    ) -> Result<Fleet, crate::net::tls::TlsError> {
        let mut shippers = HashMap::new();
        for replica in &config.replicas {
            let mut c = ShipperConfig::for_replica(config, replica)?;
            let rules = policy.clone();
            c.on_conflict = Arc::new(move |table: &str| on_conflict(&rules, table));
            c.health = health(&replica.name);
            shippers.insert(replica.name.clone(), Shipper::start(c));
        }
        let replicas: Vec<String> = config.replicas.iter().map(|r| r.name.clone()).collect();
        let primary = Upstream::new(config.primary.url.clone())?;
        let lag = LagMonitor::start(primary, replicas.clone(), LAG_REFRESH, deadline);
        Ok(Fleet { shippers, lag, replicas, policy })
    }

    /// The latest lag of `replica` (None: not known — never measured, or the primary cannot
    /// be read: bounded admission counts that as over budget).
    pub fn lag(&self, replica: &str) -> Option<Lag> {
        self.lag.lag(replica)
    }

    /// Changes of `table` some replica has not applied yet (None: not known). A table moving
    /// from async to sync takes sync writes only once this is `Some(0)`.
    pub fn pending(&self, table: &str) -> Option<u64> {
        self.lag.pending(table, &self.replicas)
    }

    /// Whether sync commits also go to the change stream under the current policy (some
    /// sync rule has a quorum below the number of replicas; decision 0017): then every sync
    /// table has its own commits queued there, not only earlier async changes.
    pub fn streams_sync(&self) -> bool {
        self.policy.current().streams_sync(self.replicas.len())
    }

    /// Tell every shipper that new changes committed.
    pub fn wake(&self) {
        for s in self.shippers.values() {
            s.wake();
        }
    }
}

/// `on_conflict` of `table` (as the capture names it) under the current policy; the default
/// for a table whose rule is not async or bounded (its writes made around capgate).
pub fn on_conflict(policy: &PolicyHandle, table: &str) -> OnConflict {
    match TableName::parse(table).map(|t| policy.current().decide_table(&t).mode) {
        Some(Mode::Async { on_conflict } | Mode::Bounded { on_conflict, .. }) => on_conflict,
        _ => DEFAULT_ON_CONFLICT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_gets_its_own_rules_on_conflict() {
        let text = "default = \"local\"\n[[table]]\nmatch = \"public.skip_*\"\nmode = \"async\"\non_conflict = \"skip\"\n\
                    [[table]]\nmatch = \"public.late\"\nmode = \"bounded\"\nmax_lag = \"5s\"\non_conflict = \"latest\"\n\
                    [[table]]\nmatch = \"public.synced\"\nmode = \"sync\"\n";
        let policy = PolicyHandle::fixed(crate::policy::Policy::parse(text, std::path::Path::new("p.toml")).expect("policy"));
        assert_eq!(on_conflict(&policy, "public.skip_a"), OnConflict::Skip);
        assert_eq!(on_conflict(&policy, "public.late"), OnConflict::Latest);
        assert_eq!(on_conflict(&policy, "public.synced"), DEFAULT_ON_CONFLICT);
        assert_eq!(on_conflict(&policy, "public.other"), DEFAULT_ON_CONFLICT);
        assert_eq!(on_conflict(&policy, "not a name"), DEFAULT_ON_CONFLICT);
    }
}

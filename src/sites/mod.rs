//! The remote sites capgate replicates to: one [`Site`] per `[[replicas]]` entry, owning
//! that replica's health loop, its published [`HealthView`] and a small [`Pool`] of
//! connections for the replication code.
//!
//! - [`health`]: the state machine (healthy → suspect → partitioned → healing), without I/O;
//! - `monitor`: the health loop: a heartbeat every `heartbeat_interval` on a dedicated
//!   connection, each under a deadline, reconnecting with backoff;
//! - [`view`]: the [`Status`] snapshot and the waits built on it;
//! - [`pool`]: connections for replication, checked out under a deadline, dropped on error;
//! - [`postgres`], [`mysql`]: the protocol-specific parts (a [`Connector`] each, over
//!   tokio-postgres and mysql_async).
//!
//! Nothing here may wait on a replica without a deadline ([`with_deadline`]): a silent
//! partition keeps a TCP connection hanging for minutes, and TCP's own timers are neither
//! fast enough nor under capgate's control. Apart from [`postgres`] and [`mysql`], this module
//! stays free of database types: each kind of replica plugs in with its own [`Connector`].

mod error;
pub mod health;
mod monitor;
pub mod mysql;
pub mod pool;
pub mod postgres;
pub mod view;

pub use error::{with_deadline, BoxError, SiteError};
pub use health::{Observation, State, Thresholds};
pub use pool::{Pool, Pooled};
pub use view::{HealthView, Status};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Replica;

/// How capgate talks to one kind of replica server. The health loop and the pool are
/// written against this trait only.
pub trait Connector: Send + Sync + 'static {
    /// An open, logged-in connection. Dropping it must close it (and stop any task it owns).
    type Conn: Send + Sync + 'static;

    /// Opens and logs in one connection. Callers put their own deadline around it.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, BoxError>> + Send;

    /// One heartbeat round trip on `conn` (e.g. `SELECT 1`). Callers time it and bound it.
    fn heartbeat(&self, conn: &Self::Conn) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Whether `conn` is known to be unusable (its socket closed or failed).
    fn is_closed(conn: &Self::Conn) -> bool;
}

/// The health and pool settings of one replica, from its `[[replicas]]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// A heartbeat not answered within this is missed (and its connection dropped).
    pub heartbeat_timeout: Duration,
    /// How long opening and logging in one connection may take (the URL's
    /// `connect_timeout`). The health loop counts missed heartbeats meanwhile.
    pub connect_timeout: Duration,
    /// When the state machine moves.
    pub thresholds: Thresholds,
    /// Most connections the replication pool holds open at once.
    pub pool_size: usize,
}

impl Settings {
    pub fn from_replica(replica: &Replica) -> Settings {
        Settings {
            heartbeat_interval: replica.heartbeat_interval,
            heartbeat_timeout: replica.heartbeat_timeout,
            connect_timeout: replica.url.connect_timeout,
            thresholds: Thresholds {
                partition_latency: replica.partition_latency,
                partition_after: replica.partition_after,
                heal_after: replica.heal_after,
            },
            pool_size: replica.pool_size,
        }
    }
}

/// One remote replica: its health loop (running while this value lives), its health view
/// and its connection pool.
pub struct Site<C: Connector> {
    /// The configured name, used in every error and log line about it.
    name: Arc<str>,
    settings: Settings,
    health: HealthView,
    pool: Pool<C>,
    /// The health loop; aborted when the site is dropped.
    _monitor: AbortOnDrop<()>,
}

impl<C: Connector> Site<C> {
    /// Starts the health loop for replica `name` (on the current tokio runtime) and creates
    /// its (empty) pool. Returns at once; the state is Suspect until the first heartbeat.
    pub fn start(name: &str, connector: C, settings: Settings) -> Site<C> {
        let name: Arc<str> = name.into();
        let connector = Arc::new(connector);
        let (tx, rx) = watch::channel(Status::initial(std::time::Instant::now()));
        let pool = Pool::new(name.clone(), connector.clone(), settings.pool_size, settings.connect_timeout);
        let idle = pool.clone();
        let monitor = tokio::spawn(monitor::run(name.clone(), connector, settings, tx, move || idle.clear_idle()));
        Site { health: HealthView::new(name.clone(), rx), pool, name, settings, _monitor: AbortOnDrop(monitor) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The replica's health, to read on the hot path or wait on.
    pub fn health(&self) -> &HealthView {
        &self.health
    }

    /// Connections for replication work.
    pub fn pool(&self) -> &Pool<C> {
        &self.pool
    }
}

/// Every configured replica, in configuration order.
pub struct Sites<C: Connector> {
    sites: Vec<Site<C>>,
}

impl<C: Connector> Sites<C> {
    pub fn new(sites: Vec<Site<C>>) -> Sites<C> {
        Sites { sites }
    }

    /// The replica called `name`.
    pub fn get(&self, name: &str) -> Option<&Site<C>> {
        self.sites.iter().find(|s| s.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Site<C>> {
        self.sites.iter()
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
}

impl<C: Connector> IntoIterator for Sites<C> {
    type Item = Site<C>;
    type IntoIter = std::vec::IntoIter<Site<C>>;

    fn into_iter(self) -> Self::IntoIter {
        self.sites.into_iter()
    }
}

/// A spawned task that ends with its owner.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

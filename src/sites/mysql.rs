//! MySQL / MariaDB replicas: the [`Connector`] the health loop uses, over mysql_async (TLS as
//! the URL's `sslmode` says, the same options capgate's replica sessions use).
//!
//! The heartbeat is `COM_PING`: one round trip, no statement, nothing in the server's query
//! log. A replica the start could not set up (it did not answer then) gets capgate's functions
//! from the health loop's first connection that reaches it (decision 0038). The pool of a
//! MySQL site stays unused: sync commits hold their replica connections per client session (a
//! connection with a prepared XA branch must never go back to a pool, MYSQL.md §3.3) and the
//! shipper keeps its own.

use std::sync::Arc;

use mysql_async::prelude::Queryable;

use crate::config::{Config, DbUrl};
use crate::store::mysql::replica_setup::ReplicaSetup;
use crate::store::mysql::xa;

use super::error::BoxError;
use super::{Connector, Settings, Site, Sites};

/// How to reach one MySQL or MariaDB server.
pub struct MyConnector {
    url: DbUrl,
    /// A replica's setup (decision 0038): a connection counts as opened only once capgate's
    /// functions are installed there, so a replica that could not be set up stays
    /// partitioned, with the reason as its last error. None: the primary's heartbeat.
    setup: Option<Arc<ReplicaSetup>>,
}

impl MyConnector {
    pub fn new(url: DbUrl) -> MyConnector {
        MyConnector { url, setup: None }
    }

    /// A replica's connector: its first connection installs what `setup` says is missing.
    pub fn replica(url: DbUrl, setup: Arc<ReplicaSetup>) -> MyConnector {
        MyConnector { url, setup: Some(setup) }
    }
}

/// A logged-in mysql_async connection. The heartbeat needs `&mut` while the trait hands out
/// `&`: the health loop is the only user, so the lock is never contended.
pub struct MyConn(tokio::sync::Mutex<mysql_async::Conn>);

impl Connector for MyConnector {
    type Conn = MyConn;

    async fn connect(&self) -> Result<MyConn, BoxError> {
        let mut conn = xa::connect(&self.url).await?;
        if let Some(setup) = &self.setup {
            setup.ensure(&mut conn).await?;
        }
        Ok(MyConn(tokio::sync::Mutex::new(conn)))
    }

    /// `COM_PING`.
    async fn heartbeat(&self, conn: &MyConn) -> Result<(), BoxError> {
        conn.0.lock().await.ping().await?;
        Ok(())
    }

    /// mysql_async does not say whether its socket closed without an operation on it: a
    /// closed connection shows as a failed heartbeat instead, one interval later.
    fn is_closed(_conn: &MyConn) -> bool {
        false
    }
}

/// A MySQL replica site.
pub type MySite = Site<MyConnector>;

/// Starts a [`Site`] for every `[[replicas]]` entry of `config` (on the current tokio
/// runtime), each with its setup from `setups` (same order; a replica without one is only
/// watched); an unreachable replica starts and reports itself partitioned.
pub fn start(config: &Config, setups: &[Arc<ReplicaSetup>]) -> Sites<MyConnector> {
    let sites = config
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let connector = match setups.get(i) {
                Some(setup) => MyConnector::replica(r.url.clone(), setup.clone()),
                None => MyConnector::new(r.url.clone()),
            };
            Site::start(&r.name, connector, Settings::from_replica(r))
        })
        .collect();
    Sites::new(sites)
}

/// A heartbeat on the site's own MySQL primary, for the admin views: the same loop and the
/// same relaxed settings as PostgreSQL's ([`super::postgres::primary_health`]).
pub fn primary_health(config: &Config) -> MySite {
    Site::start("primary", MyConnector::new(config.primary.url.clone()), super::postgres::primary_settings(config))
}

//! MySQL / MariaDB replicas: the [`Connector`] the health loop uses, over mysql_async (TLS as
//! the URL's `sslmode` says, the same options capgate's replica sessions use).
//!
//! The heartbeat is `COM_PING`: one round trip, no statement, nothing in the server's query
//! log. The pool of a MySQL site stays unused: sync commits hold their replica connections
//! per client session (a connection with a prepared XA branch must never go back to a pool,
//! MYSQL.md §3.3) and the shipper keeps its own.

use mysql_async::prelude::Queryable;

use crate::config::{Config, DbUrl};
use crate::store::mysql::xa;

use super::error::BoxError;
use super::{Connector, Settings, Site, Sites};

/// How to reach one MySQL or MariaDB server.
pub struct MyConnector {
    url: DbUrl,
}

impl MyConnector {
    pub fn new(url: DbUrl) -> MyConnector {
        MyConnector { url }
    }
}

/// A logged-in mysql_async connection. The heartbeat needs `&mut` while the trait hands out
/// `&`: the health loop is the only user, so the lock is never contended.
pub struct MyConn(tokio::sync::Mutex<mysql_async::Conn>);

impl Connector for MyConnector {
    type Conn = MyConn;

    async fn connect(&self) -> Result<MyConn, BoxError> {
        Ok(MyConn(tokio::sync::Mutex::new(xa::connect(&self.url).await?)))
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
/// runtime); an unreachable replica starts and reports itself partitioned.
pub fn start(config: &Config) -> Sites<MyConnector> {
    let sites = config.replicas.iter().map(|r| Site::start(&r.name, MyConnector::new(r.url.clone()), Settings::from_replica(r))).collect();
    Sites::new(sites)
}

/// A heartbeat on the site's own MySQL primary, for the admin views: the same loop and the
/// same relaxed settings as PostgreSQL's ([`super::postgres::primary_health`]).
pub fn primary_health(config: &Config) -> MySite {
    Site::start("primary", MyConnector::new(config.primary.url.clone()), super::postgres::primary_settings(config))
}

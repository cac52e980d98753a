//! PostgreSQL replicas: the [`Connector`] the health loop and the pool use, over
//! [`Upstream`] (TCP or Unix socket, TLS as the URL says) and tokio-postgres.

use std::ops::Deref;

use crate::backend::postgres::Upstream;
use crate::config::Config;

use super::error::{BoxError, SiteError};
use super::{AbortOnDrop, Connector, Settings, Site, Sites};

/// The `application_name` capgate's replica connections carry, so a DBA can tell them
/// apart in `pg_stat_activity` on the replica.
const APPLICATION_NAME: &str = "capgate";

/// How to reach one PostgreSQL replica.
pub struct PgConnector {
    upstream: Upstream,
    /// `idle_in_transaction_session_timeout` of capgate's replica sessions: a transaction
    /// capgate abandoned (its connection lost in a partition) must not keep its row locks on
    /// the replica until TCP keepalives notice, hours later. Zero leaves the server's setting.
    idle_tx_timeout: std::time::Duration,
}

impl PgConnector {
    pub fn new(upstream: Upstream) -> PgConnector {
        PgConnector { upstream, idle_tx_timeout: std::time::Duration::ZERO }
    }

    /// The same, with abandoned replica transactions ended by the replica after `timeout`.
    pub fn with_idle_tx_timeout(upstream: Upstream, timeout: std::time::Duration) -> PgConnector {
        PgConnector { upstream, idle_tx_timeout: timeout }
    }
}

/// A logged-in tokio-postgres client whose connection task ends when it is dropped (even
/// with a query still waiting on a silent partition). Derefs to the client.
pub struct PgConn {
    client: tokio_postgres::Client,
    _task: AbortOnDrop<()>,
    /// How to reach the replica again, for a cancel request.
    upstream: Upstream,
}

impl PgConn {
    /// Ask the replica to cancel what this connection is running (e.g. a statement waiting
    /// for a lock after capgate gave up on it), over a new connection as the protocol wants.
    /// Best effort: bounded by the URL's connect_timeout, errors ignored.
    pub fn cancel_in_background(&self) {
        let token = self.client.cancel_token();
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            let timeout = upstream.url.connect_timeout;
            let cancel = async {
                let stream = upstream.connect_plain().await.map_err(|e| e.to_string())?;
                token.cancel_query_raw(stream, tokio_postgres::NoTls).await.map_err(|e| e.to_string())
            };
            if let Ok(Err(e)) = tokio::time::timeout(timeout, cancel).await {
                tracing::debug!("cancel request to the replica failed: {e}");
            }
        });
    }
}

impl Deref for PgConn {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

impl Connector for PgConnector {
    type Conn = PgConn;

    async fn connect(&self) -> Result<PgConn, BoxError> {
        let (client, task) = self.upstream.client_with_task(APPLICATION_NAME).await?;
        let conn = PgConn { client, _task: AbortOnDrop(task), upstream: self.upstream.clone() };
        if !self.idle_tx_timeout.is_zero() {
            let ms = self.idle_tx_timeout.as_millis();
            conn.client.batch_execute(&format!("SET idle_in_transaction_session_timeout = {ms}")).await?;
        }
        Ok(conn)
    }

    /// `SELECT 1` in the simple protocol: one round trip, no statement to prepare.
    async fn heartbeat(&self, conn: &PgConn) -> Result<(), BoxError> {
        conn.client.simple_query("SELECT 1").await?;
        Ok(())
    }

    fn is_closed(conn: &PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// A PostgreSQL replica site.
pub type PgSite = Site<PgConnector>;

/// Starts a [`Site`] for every `[[replicas]]` entry of `config` (on the current tokio
/// runtime). Fails only when a replica's TLS settings cannot be loaded; an unreachable
/// replica starts and reports itself partitioned.
pub fn start(config: &Config) -> Result<Sites<PgConnector>, SiteError> {
    let mut sites = Vec::with_capacity(config.replicas.len());
    for replica in &config.replicas {
        let upstream =
            Upstream::new(replica.url.clone()).map_err(|e| SiteError::failed(&replica.name, "loading the TLS settings of its URL", e))?;
        // Well past any wait of capgate's own on a replica operation (5 × the larger of
        // partition_latency and heartbeat_timeout), at least 10 s.
        let idle = (replica.partition_latency.max(replica.heartbeat_timeout) * 20).max(std::time::Duration::from_secs(10));
        sites.push(Site::start(&replica.name, PgConnector::with_idle_tx_timeout(upstream, idle), Settings::from_replica(replica)));
    }
    Ok(Sites::new(sites))
}

/// A heartbeat on the site's own primary, for the admin views (`/status` shows whether the
/// primary answers). Same loop as a replica's, with fixed, relaxed settings: it decides
/// nothing, every session finds out about an unreachable primary by itself.
pub fn primary_health(config: &Config) -> Result<PgSite, SiteError> {
    let upstream = Upstream::new(config.primary.url.clone())
        .map_err(|e| SiteError::failed("primary", "loading the TLS settings of [primary].url", e))?;
    Ok(Site::start("primary", PgConnector::new(upstream), primary_settings(config)))
}

/// The fixed, relaxed health settings of a primary's heartbeat (any database).
pub(super) fn primary_settings(config: &Config) -> Settings {
    Settings {
        heartbeat_interval: std::time::Duration::from_secs(1),
        heartbeat_timeout: std::time::Duration::from_secs(3),
        connect_timeout: config.primary.url.connect_timeout,
        thresholds: super::Thresholds { partition_latency: std::time::Duration::from_secs(2), partition_after: 2, heal_after: 1 },
        pool_size: 1,
    }
}

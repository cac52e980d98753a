//! The PostgreSQL front end: accepts application connections and relays each one to the
//! site's primary with full fidelity.
//!
//! - [`session`]: one connection from accept to close;
//! - [`admin_sql`]: the admin commands (`SHOW CAPGATE …`) answered on this port;
//! - [`auth`]: pass-through or proxy-side authentication;
//! - [`boundaries`]: where the client's transactions end, also while it pipelines;
//! - [`relay`]: the two-direction frame pump;
//! - [`refusal`]: the statements that make the primary raise a refusal in place;
//! - [`effects`]: what a routed statement may change (a commit point, a sync or bounded table),
//!   which decides where the [`coordinator`] takes over;
//! - [`cancel`]: the proxy's cancel keys mapped to the primary's;
//! - [`conn`]: a buffered connection for the message-at-a-time startup phase.
//!
//! Nothing here may decide replication: that belongs to the protocol-neutral layers above.

pub mod admin_sql;
pub mod auth;
pub mod boundaries;
pub mod cancel;
pub mod capture_loop;
pub mod conn;
pub mod coordinator;
pub mod effects;
pub mod refusal;
pub mod relay;
pub mod replication;
pub mod replies;
pub mod search_path;
pub mod session;
pub mod statements;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

pub use crate::backend::postgres::{Upstream, UpstreamError};
use crate::classify::{Catalog, Dialect};
use crate::config::Config;
use crate::net::tls;
use crate::policy::{Policy, PolicyHandle};
use crate::protocol::postgres::message::ErrorMessage;
use crate::protocol::postgres::FrameError;
use crate::replicate::Router;
pub use cancel::CancelRegistry;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection closed by peer")]
    Closed,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(FrameError),
    #[error("the primary broke the protocol: {0}")]
    UpstreamProtocol(&'static str),
    #[error("cannot reach the primary: {0}")]
    Upstream(UpstreamError),
    #[error("authentication timed out")]
    AuthTimeout,
    /// The proxy refused the session with this error.
    #[error("{}", .0.message)]
    Refused(ErrorMessage),
    /// The primary's own error was forwarded to the client; nothing more to say.
    #[error("the primary ended the session with an error")]
    Forwarded,
}

impl SessionError {
    /// The error the client is told, if any.
    pub fn client_message(&self, site: &str, primary: &str) -> Option<ErrorMessage> {
        Some(match self {
            SessionError::Closed | SessionError::Io(_) | SessionError::Forwarded => return None,
            SessionError::Protocol(e) => ErrorMessage::fatal("08P01", format!("invalid frontend message: {e}")),
            SessionError::UpstreamProtocol(what) => {
                ErrorMessage::fatal("08P01", format!("capgate: the primary of site \"{site}\" at {primary} broke the protocol: {what}"))
            }
            SessionError::Upstream(e) => {
                ErrorMessage::fatal("08006", format!("capgate: cannot connect to the primary of site \"{site}\" at {primary}: {e}"))
                    .with_hint("check that the primary is running and that [primary].url in the capgate configuration is right")
            }
            SessionError::AuthTimeout => ErrorMessage::fatal("57014", "canceling authentication due to timeout"),
            SessionError::Refused(m) => m.clone(),
        })
    }
}

/// Errors that stop the listener from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("[tls]: {0}")]
    Tls(tls::TlsError),
    #[error("[primary].url: {0}")]
    PrimaryTls(tls::TlsError),
    #[error("{0}")]
    Policy(crate::policy::PolicyError),
    #[error("{0}")]
    Replica(crate::sites::SiteError),
}

/// What every session of one listener shares. Immutable except the cancel registry.
pub struct Shared {
    pub config: Arc<Config>,
    /// One permit per client session; `max_connections` permits.
    pub sessions: Arc<Semaphore>,
    /// Classification and policy decisions for every statement.
    pub router: Arc<Router>,
    pub primary: Upstream,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub cancels: CancelRegistry,
    /// Replica sites, shippers and two-phase commit ids.
    pub replication: Arc<replication::Replication>,
    /// What the admin endpoints and the admin SQL commands read.
    pub admin: Arc<crate::admin::AdminState>,
    /// The heartbeat on the primary that `/status` shows (runs while this lives).
    _primary_health: crate::sites::postgres::PgSite,
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    /// The admin HTTP listener, when `admin` is configured.
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Bind the configured `listen` address and prepare TLS. Binding port 0 picks a free port
    /// (see [`Server::local_addr`]).
    pub async fn bind(config: Arc<Config>) -> Result<Server, StartError> {
        let tls = match &config.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(&t.cert, &t.key).map_err(StartError::Tls)?)),
            None => None,
        };
        let primary = Upstream::new(config.primary.url.clone()).map_err(StartError::PrimaryTls)?;
        let policy = match &config.policy {
            Some(path) => PolicyHandle::load(path).map_err(StartError::Policy)?,
            None => PolicyHandle::fixed(Policy::default()),
        };
        let router = Arc::new(Router::new(Dialect::Postgres, Arc::new(policy), Catalog::new()));
        // The first statements must already resolve names as the primary does: an unknown
        // table would fall to the wrong schema, and a replicated write could pass as local.
        // A primary that cannot be read in time is retried in the background (run).
        let mut catalog_read = first_catalog(&primary, &router, true).await;
        let listener = TcpListener::bind(config.listen).await.map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let admin = match config.admin {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?),
            None => None,
        };
        let sessions = Arc::new(Semaphore::new(config.max_connections));
        // Replica health loops, shippers and the recovery loop run for the life of the
        // server (dropping them stops them); none of them waits for a database here.
        let sites = crate::sites::postgres::start(&config).map_err(StartError::Replica)?;
        let replication = replication::Replication::start(&config, router.policy().clone(), sites).map_err(StartError::Replica)?;
        // Writes to a replicated table are refused until its capture trigger is known to be
        // there: wait (bounded) for the first round so a normal start refuses nothing.
        if !config.replicas.is_empty() && !replication.capture.wait_first(std::time::Duration::from_secs(10)).await {
            warn!("the capture triggers could not be checked on the primary yet; writes to replicated tables are refused until they are");
        }
        // A primary still starting when capgate did may answer now (the capture check above
        // waited for it): the first sessions must not come before the catalog.
        if !catalog_read {
            catalog_read = first_catalog(&primary, &router, false).await;
        }
        if !catalog_read {
            warn!("the primary's catalog could not be read yet; retrying in the background");
        }
        let primary_health = crate::sites::postgres::primary_health(&config).map_err(StartError::Replica)?;
        let admin_state = Arc::new(admin_state(&config, &router, &replication, &sessions, primary_health.health().clone()));
        let shared = Arc::new(Shared {
            config,
            sessions,
            router,
            primary,
            tls,
            cancels: CancelRegistry::default(),
            replication,
            admin: admin_state,
            _primary_health: primary_health,
        });
        Ok(Server { listener, admin, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.shared.config.listen)
    }

    /// Where the admin endpoints listen, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serve until `shutdown` resolves; then stop accepting, close idle sessions, let the
    /// others finish their transactions for up to `shutdown_timeout`, and return. `force`
    /// (a second signal) returns at once.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>, force: impl Future<Output = ()>) {
        let config = self.shared.config.clone();
        let sessions = self.shared.sessions.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let _policy_watcher = AbortOnDrop(self.shared.router.policy().spawn_reload_watcher());
        let _catalog = AbortOnDrop(tokio::spawn(maintain_catalog(self.shared.clone())));
        let _admin_views = AbortOnDrop(tokio::spawn(crate::admin::maintain(Arc::downgrade(&self.shared.admin))));
        let _admin = self.admin.take().map(|listener| AbortOnDrop(tokio::spawn(crate::admin::serve(listener, self.shared.admin.clone()))));
        info!(listen = %self.local_addr(), primary = %config.primary.url, site = %config.site, workers = config.workers, "capgate is accepting connections");
        let shared = self.shared.clone();
        let serve = move |tcp, refusal, stop| session::serve(shared.clone(), tcp, refusal, stop);
        if config.tls.is_some() {
            info!("SCRAM channel binding (SCRAM-SHA-256-PLUS) is not offered to clients: capgate ends their TLS; clients with channel_binding=require cannot log in");
        }
        let workers = match crate::frontend::workers::Workers::start(config.workers) {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot start {} session worker threads ({e}); not accepting connections", config.workers);
                return;
            }
        };
        *self.shared.admin.session_runtimes.lock().unwrap_or_else(|e| e.into_inner()) = workers.handles();
        crate::frontend::listener::accept_until(&self.listener, &workers, &sessions, shutdown, &stop_rx, serve).await;
        drop(self.listener);
        crate::frontend::listener::drain(&config, &sessions, stop_tx, force).await;
        drop(workers);
    }
}

/// The admin views of a listener: its replicas' health and shippers, its primary's
/// heartbeat, its sessions.
fn admin_state(
    config: &Arc<Config>,
    router: &Arc<Router>,
    replication: &Arc<replication::Replication>,
    sessions: &Arc<Semaphore>,
    primary: crate::sites::HealthView,
) -> crate::admin::AdminState {
    let views = replication
        .sites
        .iter()
        .map(|site| {
            let shipper = replication.fleet.as_ref().map(|fleet| crate::admin::ShipperView { fleet: fleet.clone() });
            crate::admin::ReplicaSource::new(site.health().clone(), shipper)
        })
        .collect();
    let sem = sessions.clone();
    let max = config.max_connections;
    let state = crate::admin::AdminState::new(
        config.clone(),
        router.policy().clone(),
        router.clone(),
        views,
        Some(primary),
        Box::new(move || max - sem.available_permits()),
    );
    // `POST /tables/<t>/resume` (and `capgate resume`) reach this process's shippers.
    match replication.fleet {
        Some(_) => state.with_resume(replication.clone()),
        None => state,
    }
}

/// Aborts a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the primary's catalog into `router` before capgate accepts sessions, within 10 s;
/// whether it could (`first`: whether to say why not).
async fn first_catalog(primary: &Upstream, router: &Router, first: bool) -> bool {
    let load = async {
        let client = primary.client("capgate catalog").await.map_err(|e| e.to_string())?;
        crate::backend::postgres_catalog::load(&client).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), load).await {
        Ok(Ok(catalog)) => {
            router.set_catalog(catalog);
            true
        }
        Ok(Err(e)) => {
            if first {
                warn!("cannot read the primary's catalog yet ({e}); trying again before accepting sessions");
            }
            false
        }
        Err(_) => {
            if first {
                warn!("reading the primary's catalog took more than 10 s; trying again before accepting sessions");
            }
            false
        }
    }
}

/// Keep the router's catalog in step with the primary: load it at start (retrying while the
/// primary cannot be reached or the URL's credentials are refused), and again after DDL.
/// Until the first load succeeds the catalog is incomplete: functions that are not known
/// built-ins make statements `unknown`, which the policy's `unknown` setting governs.
async fn maintain_catalog(shared: Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        let loaded = async {
            let client = shared.primary.client("capgate catalog").await.map_err(|e| e.to_string())?;
            crate::backend::postgres_catalog::load(&client).await.map_err(|e| e.to_string())
        }
        .await;
        match loaded {
            Ok(catalog) => {
                failures = 0;
                shared.router.set_catalog(catalog);
                tracing::debug!("catalog loaded from the primary");
                // After DDL through capgate at once; DDL through other connections is seen
                // within a minute.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(60), shared.router.stale()).await;
                // Let a burst of DDL finish before reading the catalog again.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                if failures == 0 {
                    warn!(
                        "cannot read the primary's catalog with the [primary].url credentials ({e}); \
                         classification treats user functions as unknown until it can"
                    );
                }
                failures += 1;
                tokio::time::sleep(std::time::Duration::from_secs(5.min(failures as u64))).await;
            }
        }
    }
}

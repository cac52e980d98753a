//! The MySQL / MariaDB front end: accepts application connections and relays each one to the
//! site's primary with full fidelity.
//!
//! - [`setup`]: capture on the primary and the replicas' functions at start; XA recovery;
//! - [`session`]: one connection from accept to close;
//! - [`handshake`]: the greeting, TLS on both legs and the capabilities each leg gets;
//! - [`auth`]: pass-through or proxy-side authentication;
//! - [`relay`]: the two packet pumps and the reply queue between them;
//! - [`hold`]: a COMMIT held for the sync commit;
//! - [`implicit`]: statements that commit implicitly, and queries where that cannot be coordinated;
//! - [`statements`]: what the session's statements write, decided by the policy; `KILL`;
//! - [`admin_sql`]: the admin commands (`SHOW CAPGATE …`) answered on this port;
//! - [`sync`]: the sync commit over XA, driving `replicate::coordinator::SyncCommit`;
//! - [`truncate`]: a TRUNCATE of a replicated table carried as one captured change (decision 0029);
//! - [`conn`]: a buffered connection for the packet-at-a-time connection phase.
//!
//! Nothing here may decide replication: that belongs to the protocol-neutral layers above.
//! Sync tables are replicated over XA at COMMIT (decisions 0015, 0016); async and bounded
//! tables are shipped by `replicate::shipper::mysql` (decision 0021), and a write to a bounded
//! table is refused while a replica is over the table's `max_lag`.

pub mod admin_sql;
pub mod auth;
pub mod conn;
pub mod ddl;
pub mod ddl_missed;
pub mod handshake;
pub mod hold;
pub mod implicit;
pub mod locks;
pub mod partitions;
pub mod parts;
pub mod policy_limits;
pub mod relay;
pub mod reserved;
pub mod session;
pub mod setup;
pub mod sql_prepare;
pub mod statements;
pub mod sync;
pub mod truncate;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

pub use crate::backend::mysql::{Upstream, UpstreamError};
use crate::classify::{Catalog, Dialect};
use crate::config::Config;
use crate::net::tls;
use crate::policy::{Policy, PolicyHandle};
use crate::protocol::mysql::PacketError;
use crate::replicate::shipper::mysql::{LateFleet, MyFleet};
use crate::replicate::Router;
use crate::sites::mysql::{MyConnector, MySite};
use crate::sites::Sites;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection closed by peer")]
    Closed,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("protocol violation: {0}")]
    Packet(PacketError),
    #[error("the primary broke the protocol: {0}")]
    UpstreamProtocol(&'static str),
    #[error("cannot reach the primary: {0}")]
    Upstream(UpstreamError),
    #[error("authentication timed out")]
    AuthTimeout,
    /// capgate refused the session with this error (code and SQLSTATE, message).
    #[error("{message}")]
    Refused { code: (u16, &'static str), message: String },
    /// The primary's own error was forwarded to the client; nothing more to say.
    #[error("the primary ended the session with an error")]
    Forwarded,
}

impl SessionError {
    pub fn refused(code: (u16, &'static str), message: impl Into<String>) -> SessionError {
        SessionError::Refused { code, message: message.into() }
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
    #[error("replication: {0}")]
    Replication(setup::SetupError),
}

/// Counters of what the MySQL front end relayed.
#[derive(Debug, Default)]
pub struct Counters {
    /// Writes to tables whose policy mode is not `local`, relayed without replication (no
    /// replicas configured).
    pub unreplicated_writes: AtomicU64,
}

/// The primary's thread ids of the sessions being served, with the user each client
/// authenticated as: a `KILL` may only name a connection of the same user.
#[derive(Debug, Default)]
pub struct Threads(Mutex<HashMap<u32, String>>);

impl Threads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a session's primary connection; it is forgotten when the guard drops.
    pub fn register(self: &Arc<Self>, id: u32, user: &str) -> ThreadGuard {
        self.lock().insert(id, user.to_owned());
        ThreadGuard { threads: self.clone(), id }
    }

    /// Whether `user` may kill primary thread `id`.
    pub fn owned_by(&self, id: u32, user: &str) -> bool {
        self.lock().get(&id).is_some_and(|u| u == user)
    }

    /// Change the user of a session (after COM_CHANGE_USER).
    pub fn set_user(&self, id: u32, user: &str) {
        if let Some(u) = self.lock().get_mut(&id) {
            *u = user.to_owned();
        }
    }
}

/// Removes a session's entry from [`Threads`].
pub struct ThreadGuard {
    threads: Arc<Threads>,
    id: u32,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.threads.lock().remove(&self.id);
    }
}

/// What every session of one listener shares.
pub struct Shared {
    pub config: Arc<Config>,
    /// One permit per client session; `max_connections` permits.
    pub sessions: Arc<Semaphore>,
    /// Classification and policy decisions for every statement.
    pub router: Arc<Router>,
    pub primary: Upstream,
    /// TLS towards clients, when `[tls]` is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub threads: Arc<Threads>,
    pub counters: Counters,
    /// The replicas sync commits go to (None: no replicas configured).
    pub sync: Option<sync::SyncShared>,
    /// The shippers of async and bounded tables and every replica's lag: started at start,
    /// or after the policy reload that adds the first async or bounded rule (see
    /// [`Shared::ship_if_needed`]); not started without replicas.
    pub shipping: Arc<LateFleet>,
    /// The policy the primary's capture triggers were last brought in step with: a write to
    /// a table whose capture differs in the policy in force is refused until the triggers
    /// follow (after a reload; [`Shared::capture_pending`]).
    pub reconciled: RwLock<Option<Arc<Policy>>>,
    /// Every replica's health loop (sync admission and the admin views read it).
    pub sites: Sites<MyConnector>,
    /// The heartbeat on the primary, for the admin views.
    pub primary_health: MySite,
    /// What the admin endpoints and the admin SQL commands read.
    pub admin: Arc<crate::admin::AdminState>,
}

impl Shared {
    /// Start the shippers (once) when `policy`, whose capture triggers are in place, has an
    /// async or bounded rule and replicas are configured: at start, and after the policy
    /// reload that adds the first such rule (no restart needed). `true` when this call
    /// started them.
    pub fn ship_if_needed(&self, policy: &Policy) -> bool {
        if self.sync.is_none() || !policy.ships_async() {
            return false;
        }
        let health = |name: &str| self.sites.get(name).map(|s| s.health().clone());
        let (_, started) = self.shipping.start_with(|| MyFleet::start(&self.config, self.router.policy().clone(), health));
        if started {
            info!(policy_version = policy.version, "shipping async and bounded tables to every replica");
        }
        started
    }

    /// The policy the capture triggers were last brought in step with (None: no replicas, or
    /// a round after DDL failed and the maintenance loop must run one again).
    pub fn reconciled(&self) -> Option<Arc<Policy>> {
        self.reconciled.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Record that the capture triggers match `policy`.
    pub fn set_reconciled(&self, policy: Arc<Policy>) {
        *self.reconciled.write().unwrap_or_else(|p| p.into_inner()) = Some(policy);
    }

    /// The capture triggers may no longer match the policy (a round after DDL failed): the
    /// maintenance loop runs rounds until one succeeds.
    pub fn reconcile_again(&self) {
        *self.reconciled.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// When a write decided by `decision` must wait for the capture triggers: the policy
    /// in force captures the table differently than the policy the triggers were last
    /// brought in step with (a reload has just made it async, bounded or sync, or changed
    /// between sync and async). The version the triggers follow, in that case.
    /// `policy` is the one `decision` was made by (the shared one, in the common case: then
    /// there is nothing to compare).
    pub fn capture_pending(&self, policy: &Arc<Policy>, decision: &crate::policy::Decision) -> Option<u64> {
        use crate::store::CaptureMode;
        // `latest` records as async on MySQL (decision 0015's triggers).
        let capture = |m: &crate::policy::Mode| CaptureMode::of(m).map(|c| if c == CaptureMode::Latest { CaptureMode::Async } else { c });
        let reconciled = self.reconciled().filter(|r| !Arc::ptr_eq(r, policy))?;
        let (table, wanted) = (&decision.table, capture(&decision.mode));
        (wanted.is_some() && capture(&reconciled.decide_table(table).mode) != wanted).then_some(reconciled.version)
    }
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    /// The admin HTTP listener, when `admin` is configured.
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Bind the configured `listen` address and prepare TLS. Port 0 picks a free port (see
    /// [`Server::local_addr`]).
    pub async fn bind(config: Arc<Config>) -> Result<Server, StartError> {
        let tls = match &config.tls {
            Some(t) => {
                let server = tls::server_config(&t.cert, &t.key).map_err(StartError::Tls)?;
                // The ALPN name is PostgreSQL's; MySQL clients send none.
                let mut server = (*server).clone();
                server.alpn_protocols.clear();
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
            }
            None => None,
        };
        let primary = Upstream::new(config.primary.url.clone()).map_err(StartError::PrimaryTls)?;
        let policy = match &config.policy {
            Some(path) => PolicyHandle::load_checked(path, Some(policy_limits::site_check(&config))).map_err(StartError::Policy)?,
            None => PolicyHandle::fixed(Policy::default()),
        };
        let router = Arc::new(Router::new(Dialect::MySql, Arc::new(policy), Catalog::new()));
        let listener = TcpListener::bind(config.listen).await.map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let admin = match config.admin {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })?),
            None => None,
        };
        let at_start = router.policy().current();
        let mut sync = setup::start(&config, &at_start).await.map_err(StartError::Replication)?;
        let sites = crate::sites::mysql::start(&config, sync.as_ref().map(|s| s.setups()).unwrap_or_default());
        if let Some(sync) = &mut sync {
            sync.watch(sites.iter().map(|s| s.health().clone()).collect());
        }
        let primary_health = crate::sites::mysql::primary_health(&config);
        let reconciled = RwLock::new(sync.is_some().then_some(at_start));
        let sessions = Arc::new(Semaphore::new(config.max_connections));
        let counters = Counters::default();
        let threads = Arc::default();
        let shipping: Arc<LateFleet> = Arc::default();
        let admin_state = Arc::new(admin_state(&config, &router, &sites, &shipping, sync.is_some(), &sessions, &primary_health));
        let shared = Arc::new(Shared {
            config,
            sessions,
            router,
            primary,
            tls,
            threads,
            counters,
            sync,
            shipping,
            reconciled,
            sites,
            primary_health,
            admin: admin_state,
        });
        if let Some(policy) = shared.reconciled() {
            shared.ship_if_needed(&policy);
        }
        Ok(Server { listener, admin, shared })
    }

    /// Where the admin endpoints listen, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.shared.config.listen)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serve until `shutdown` resolves; then stop accepting, close idle sessions, let the
    /// others finish their transactions for up to `shutdown_timeout`, and return. `force`
    /// (a second signal) returns at once.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>, force: impl Future<Output = ()>) {
        let config = self.shared.config.clone();
        // /status, /metrics, the dashboard: the policy, the router's counters, the client
        // sessions, the primary's heartbeat, each replica's health and shipping.
        let views = tokio::spawn(crate::admin::maintain(Arc::downgrade(&self.shared.admin)));
        let admin = self.admin.take().map(|listener| tokio::spawn(crate::admin::serve(listener, self.shared.admin.clone())));
        let recovery = self.shared.sync.is_some().then(|| tokio::spawn(setup::maintenance_loop(self.shared.clone())));
        let sessions = self.shared.sessions.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let watcher = self.shared.router.policy().spawn_reload_watcher();
        info!(listen = %self.local_addr(), primary = %config.primary.url, site = %config.site, workers = config.workers, "capgate is accepting MySQL connections");
        let shared = self.shared.clone();
        let serve = move |tcp, refusal, stop| session::serve(shared.clone(), tcp, refusal, stop);
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
        watcher.abort();
        if let Some(a) = admin {
            a.abort();
        }
        views.abort();
        if let Some(r) = recovery {
            r.abort();
        }
    }
}

/// The admin views of a listener (the HTTP endpoints and the admin SQL commands): its
/// replicas' health and shippers (`replicated`: replicas are configured), its primary's
/// heartbeat, its sessions.
fn admin_state(
    config: &Arc<Config>,
    router: &Arc<Router>,
    sites: &Sites<MyConnector>,
    shipping: &Arc<LateFleet>,
    replicated: bool,
    sessions: &Arc<Semaphore>,
    primary_health: &MySite,
) -> crate::admin::AdminState {
    let replicas = sites
        .iter()
        .map(|site| {
            let shipper = replicated.then(|| crate::admin::ShipperView { fleet: shipping.clone() });
            crate::admin::ReplicaSource::new(site.health().clone(), shipper)
        })
        .collect();
    let sessions = sessions.clone();
    let max = config.max_connections;
    let state = crate::admin::AdminState::new(
        config.clone(),
        router.policy().clone(),
        router.clone(),
        replicas,
        Some(primary_health.health().clone()),
        Box::new(move || max - sessions.available_permits()),
    );
    match replicated {
        true => state.with_resume(shipping.clone()),
        false => state,
    }
}

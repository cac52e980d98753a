//! Replication to MySQL replicas at start (decisions 0015, 0016): the primary's `capgate`
//! database and capture triggers, the privileges they need, each replica's `capgate`
//! functions (a replica that does not answer then is set up when it does: decision 0038;
//! one that refuses capgate's account fails the start); then, while serving: the triggers reconciled within a quarter second of a
//! policy reload (and the shippers started when it brings the first async or bounded rule),
//! and a recovery round per replica every few seconds.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::sync::SyncShared;
use super::Shared;
use crate::config::Config;
use crate::policy::Policy;
use crate::store::mysql::xa;
use crate::store::mysql::{capture, primary};
use crate::store::CaptureMode;

/// Time between two recovery rounds on each replica.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("[primary].url: {0}")]
    Primary(String),
    #[error("{0}")]
    Privileges(primary::PrimaryError),
    #[error("replica \"{name}\": {why}")]
    Replica { name: String, why: String },
}

/// Make the primary capture what `policy` replicates and check every replica: the shared
/// sync state, or None without replicas.
pub async fn start(config: &Config, policy: &Policy) -> Result<Option<SyncShared>, SetupError> {
    if config.replicas.is_empty() {
        return Ok(None);
    }
    let primary_err = |e: &dyn std::fmt::Display| SetupError::Primary(e.to_string());
    let mut conn = wait_for_primary(&config.primary.url).await?;
    primary::install(&mut conn).await.map_err(SetupError::Privileges)?;
    let tables = capture::tables(&mut conn).await.map_err(|e| primary_err(&e))?;
    let mut schemas: Vec<String> =
        tables.keys().filter(|t| CaptureMode::of(&policy.decide_table(t).mode).is_some()).map(|t| t.schema.clone()).collect();
    schemas.dedup();
    primary::check_privileges(&mut conn, &schemas).await.map_err(SetupError::Privileges)?;
    if policy.ships_async() {
        primary::check_shipping_privileges(&mut conn).await.map_err(SetupError::Privileges)?;
    }
    let done = capture::reconcile(&mut conn, policy).await.map_err(|e| primary_err(&e))?;
    for (table, why) in &done.failed {
        warn!(%table, "cannot capture this table's changes: {why}");
    }
    info!(
        captured = done.captured.len(),
        installed = done.installed.len(),
        removed = done.removed.len(),
        "capture triggers match the policy"
    );
    let _ = conn.disconnect().await;
    let sync = SyncShared::new(&config.site, &config.replicas);
    // Side by side: a silent partition costs the start one deadline, not one per replica.
    let attempts = config.replicas.iter().zip(sync.setups()).map(|(r, setup)| setup.at_start(&r.url));
    let results = futures_util::future::join_all(attempts).await;
    for (r, result) in config.replicas.iter().zip(results) {
        match result {
            Ok(()) => {}
            // A partition while capgate (re)starts must not take the site down (decision 0038).
            Err(e) if e.retry_helps() => warn!(
                replica = %r.name,
                "the replica cannot be set up now ({e}); capgate starts with it partitioned: writes to sync tables are refused \
                 (or wait, per their on_partition) and async and bounded changes queue until it answers; capgate then installs \
                 its functions there before any commit or shipment uses it"
            ),
            Err(e) => {
                return Err(SetupError::Replica {
                    name: r.name.clone(),
                    why: format!(
                        "{e}; the replica answers but refuses capgate's account: fix the user or password in its url, or grant \
                         what CONFIG.md lists for replicas, then start capgate"
                    ),
                })
            }
        }
    }
    Ok(Some(sync))
}

/// How long a start waits for a primary that does not answer yet (a MariaDB started after
/// capgate, or still recovering) before giving up (decision 0036).
pub const PRIMARY_WAIT: Duration = Duration::from_secs(60);

/// Time between two connection attempts while the primary does not answer at start.
const PRIMARY_RETRY: Duration = Duration::from_millis(250);

/// capgate's first connection to the primary at start, waiting up to [`PRIMARY_WAIT`] while
/// it cannot be reached (nothing is served meanwhile: capture must be in place before the
/// first session, or a write to a replicated table would commit unreplicated). A primary
/// that answers with an error (credentials, privileges) fails at once.
async fn wait_for_primary(url: &crate::config::DbUrl) -> Result<mysql_async::Conn, SetupError> {
    let deadline = tokio::time::Instant::now() + PRIMARY_WAIT;
    let mut waiting = false;
    loop {
        let why = match tokio::time::timeout(url.connect_timeout, xa::connect(url)).await {
            Ok(Ok(conn)) => {
                if waiting {
                    info!("the primary answers; installing capture before accepting sessions");
                }
                return Ok(conn);
            }
            Ok(Err(mysql_async::Error::Io(mysql_async::IoError::Io(e)))) => e.to_string(),
            Ok(Err(e)) => return Err(SetupError::Primary(e.to_string())),
            Err(_) => format!("no answer within {:?}", url.connect_timeout),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(SetupError::Primary(format!(
                "the primary could not be reached for {PRIMARY_WAIT:?} ({why}); capgate installs capture there before it \
                 accepts sessions: start the primary (or fix the URL), then capgate"
            )));
        }
        if !waiting {
            warn!("the primary cannot be reached yet ({why}); waiting up to {PRIMARY_WAIT:?} for it before accepting sessions");
            waiting = true;
        }
        tokio::time::sleep(PRIMARY_RETRY).await;
    }
}

/// One reconciliation round of the capture triggers on the primary (after DDL, after a
/// policy reload).
pub async fn reconcile(config: &Config, policy: &Policy) -> Result<capture::Reconciled, String> {
    let mut conn = xa::connect(&config.primary.url).await.map_err(|e| e.to_string())?;
    let done = capture::reconcile(&mut conn, policy).await.map_err(|e| e.to_string());
    let _ = conn.disconnect().await;
    let done = done?;
    for (table, why) in &done.failed {
        warn!(%table, "cannot capture this table's changes: {why}");
    }
    if !done.installed.is_empty() || !done.removed.is_empty() {
        info!(installed = ?done.installed, removed = ?done.removed, "capture triggers changed");
    }
    Ok(done)
}

/// How often the loop looks for a reloaded policy: a write to a table whose capture the
/// reload changed is refused until its triggers follow, so this bounds that window.
const POLICY_POLL: Duration = Duration::from_millis(250);

/// How long one reconciliation round may take before it counts as failed.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

/// Time before a failed reconciliation round is tried again.
const RECONCILE_RETRY: Duration = Duration::from_secs(2);

/// Until aborted: within [`POLICY_POLL`] of a policy reload, bring the capture triggers in
/// step with it and then start the shippers if it is the first policy with an async or
/// bounded rule (as at start: triggers first, so the shippers' first read sees every change
/// of the new tables); every [`RECOVERY_INTERVAL`], resolve the branches capgate's processes
/// of this site left prepared on each replica (decision 0016) and, while no shipper runs,
/// bring each replica the carried DDL statements it missed (decision 0040).
pub async fn maintenance_loop(shared: Arc<Shared>) {
    // Two loops in one task, polled side by side: a recovery round stuck on a partitioned
    // replica must not delay the triggers of a reloaded policy (writes wait for them).
    tokio::join!(capture_loop(&shared), recovery_loop(&shared));
}

/// Within [`POLICY_POLL`] of a reload: the triggers, then the shippers.
async fn capture_loop(shared: &Shared) {
    let policy = shared.router.policy().clone();
    let mut next_reconcile = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(POLICY_POLL).await;
        let now = policy.current();
        let behind = shared.reconciled().is_none_or(|last| !Arc::ptr_eq(&now, &last));
        if !behind || tokio::time::Instant::now() < next_reconcile {
            continue;
        }
        let round = match tokio::time::timeout(ROUND_DEADLINE, reconcile(&shared.config, &now)).await {
            Ok(done) => done.map(|_| ()),
            Err(_) => Err(format!("the round did not finish within {ROUND_DEADLINE:?}")),
        };
        match round {
            Ok(()) => {
                shared.set_reconciled(now.clone());
                if now.ships_async() && shared.shipping.get().is_none() {
                    // At start a missing privilege refuses the start; here the policy is in
                    // force already, so the shippers start all the same.
                    if let Err(e) = check_shipping(&shared.config).await {
                        error!(policy_version = now.version, "{e}; the shippers start anyway, but fix this");
                    }
                }
                shared.ship_if_needed(&now);
            }
            Err(e) => {
                next_reconcile = tokio::time::Instant::now() + RECONCILE_RETRY;
                warn!(
                    policy_version = now.version,
                    "the capture triggers could not be brought in step with the reloaded policy: {e}; writes to the tables it \
                     changed are refused until they are (retrying in {RECONCILE_RETRY:?})"
                );
            }
        }
    }
}

/// Every [`RECOVERY_INTERVAL`]: one recovery round per replica.
async fn recovery_loop(shared: &Shared) {
    let Some(sync) = shared.sync.as_ref() else { return };
    let prefix = crate::replicate::recovery::site_prefix(&sync.site);
    // Per replica: the branches the last round left to connections that were alive.
    let mut held: Vec<xa::Held> = sync.replicas().iter().map(|_| xa::Held::default()).collect();
    loop {
        // A replica set up late (it did not answer at start) gets its round at once: branches
        // an earlier process left prepared there hold row locks its first commits would wait on.
        tokio::select! {
            _ = tokio::time::sleep(RECOVERY_INTERVAL) => {}
            _ = sync.set_up_late.notified() => {}
        }
        for ((name, url), held) in sync.replicas().iter().zip(held.iter_mut()) {
            match round(&shared.config, url, &prefix, held).await {
                Ok(report) if report.acted() => {
                    info!(replica = %name, committed = ?report.committed, rolled_back = ?report.rolled_back, "recovered prepared XA branches");
                }
                Ok(_) => {}
                Err(e) => warn!(replica = %name, "XA recovery round failed: {e}"),
            }
        }
        // Without shippers (sync rules only), the carried DDL statements a replica missed
        // reach it from here (with them, the shippers carry them in order).
        if shared.shipping.get().is_none() {
            if let Err(e) = super::ddl_missed::round(&shared.config.primary.url, &sync.site, sync.replicas()).await {
                warn!("looking for carried DDL statements a replica missed: {e}");
            }
        }
    }
}

/// [`primary::check_shipping_privileges`] on a connection of its own.
async fn check_shipping(config: &Config) -> Result<(), String> {
    let mut conn = xa::connect(&config.primary.url).await.map_err(|e| format!("cannot check the primary's privileges: {e}"))?;
    let checked = primary::check_shipping_privileges(&mut conn).await.map_err(|e| e.to_string());
    let _ = conn.disconnect().await;
    checked
}

async fn round(config: &Config, url: &crate::config::DbUrl, prefix: &str, held: &mut xa::Held) -> Result<xa::RecoveryReport, String> {
    let mut primary = xa::connect(&config.primary.url).await.map_err(|e| e.to_string())?;
    let mut replica = xa::connect(url).await.map_err(|e| e.to_string())?;
    let report = xa::recover(&mut primary, &mut replica, prefix, held).await.map_err(|e| e.to_string());
    let _ = tokio::join!(primary.disconnect(), replica.disconnect());
    report
}

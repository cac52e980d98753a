//! Replication to MySQL replicas at start (decisions 0015, 0016): the primary's `capgate`
//! database and capture triggers, the privileges they need, each replica's `capgate`
//! functions; then, while serving, every few seconds: the triggers reconciled after a policy
//! reload, and a recovery round per replica.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::sync::SyncShared;
use crate::config::Config;
use crate::policy::{Policy, PolicyHandle};
use crate::store::mysql::xa::{self, ReplicaConn};
use crate::store::mysql::{apply, capture, primary};
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
    let mut conn = xa::connect(&config.primary.url).await.map_err(|e| primary_err(&e))?;
    primary::install(&mut conn).await.map_err(SetupError::Privileges)?;
    let tables = capture::tables(&mut conn).await.map_err(|e| primary_err(&e))?;
    let mut schemas: Vec<String> =
        tables.keys().filter(|t| CaptureMode::of(&policy.decide_table(t).mode).is_some()).map(|t| t.schema.clone()).collect();
    schemas.dedup();
    primary::check_privileges(&mut conn, &schemas).await.map_err(SetupError::Privileges)?;
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
    for r in &config.replicas {
        let fail = |why: String| SetupError::Replica { name: r.name.clone(), why };
        let mut c = ReplicaConn::connect(&r.url, r.url.connect_timeout).await.map_err(|e| fail(e.to_string()))?;
        apply::install(c.conn()).await.map_err(|e| fail(e.to_string()))?;
    }
    Ok(Some(SyncShared::new(&config.site, &config.replicas)))
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

/// Every few seconds: bring the capture triggers in step with a reloaded policy, and resolve
/// the branches capgate's processes of this site left prepared on each replica (decision
/// 0016).
pub async fn maintenance_loop(config: Arc<Config>, sync: &SyncShared, policy: Arc<PolicyHandle>) {
    let prefix = crate::replicate::recovery::site_prefix(&sync.site);
    let mut last = policy.current();
    loop {
        tokio::time::sleep(RECOVERY_INTERVAL).await;
        let now = policy.current();
        if !Arc::ptr_eq(&now, &last) && reconcile(&config, &now).await.is_ok() {
            last = now;
        }
        for (name, url) in sync.replicas() {
            match round(&config, url, &prefix).await {
                Ok(report) if report.acted() => {
                    info!(replica = %name, committed = ?report.committed, rolled_back = ?report.rolled_back, "recovered prepared XA branches");
                }
                Ok(_) => {}
                Err(e) => warn!(replica = %name, "XA recovery round failed: {e}"),
            }
        }
    }
}

async fn round(config: &Config, url: &crate::config::DbUrl, prefix: &str) -> Result<xa::RecoveryReport, String> {
    let mut primary = xa::connect(&config.primary.url).await.map_err(|e| e.to_string())?;
    let mut replica = xa::connect(url).await.map_err(|e| e.to_string())?;
    let report = xa::recover(&mut primary, &mut replica, prefix).await.map_err(|e| e.to_string());
    let _ = tokio::join!(primary.disconnect(), replica.disconnect());
    report
}

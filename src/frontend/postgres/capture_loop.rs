//! Keeping the primary's capture triggers in step with the policy for as long as capgate
//! runs: at start (after installing the primary's `capgate` schema), within a second of a
//! policy reload, and every [`PERIOD`] for tables created or renamed around capgate (a CREATE
//! TABLE relayed through capgate gets its triggers in its own transaction; decision 0009).
//! When several sites take writes, each newly captured table's sequence-fed keys are checked
//! once and warned about in the log, with the text `check-config` prints (issue 16).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::classify::TableName;

use crate::backend::postgres::Upstream;
use crate::backend::postgres_checks::sequence_key_warnings;
use crate::policy::PolicyHandle;
use crate::store::postgres::capture::{reconcile, CaptureMode, Reconciled};
use crate::store::postgres::primary::install_primary;

/// How often the triggers are checked when nothing changed.
const PERIOD: Duration = Duration::from_secs(10);

/// How long one round (connect, install, reconcile) may take.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

/// The last round's result: what admission checks before a write to a replicated table (a
/// table without its capture trigger would commit unreplicated), `/status` and tests.
#[derive(Debug)]
pub struct CaptureState {
    last: watch::Sender<Option<Arc<Reconciled>>>,
}

impl Default for CaptureState {
    fn default() -> CaptureState {
        CaptureState { last: watch::channel(None).0 }
    }
}

impl CaptureState {
    pub fn last(&self) -> Option<Arc<Reconciled>> {
        self.last.borrow().clone()
    }

    /// Whether `table` has its capture trigger (None: no round has completed yet).
    pub fn captured(&self, table: &TableName) -> Option<bool> {
        self.last.borrow().as_ref().map(|r| r.captured.contains_key(table))
    }

    /// Why `table` is not captured, when the last round could not install its trigger.
    pub fn failure(&self, table: &TableName) -> Option<String> {
        self.last.borrow().as_ref().and_then(|r| r.failed.iter().find(|(t, _)| t == table).map(|(_, e)| e.clone()))
    }

    /// Waits (at most `timeout`) for the first completed round.
    pub async fn wait_first(&self, timeout: Duration) -> bool {
        let mut rx = self.last.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await.is_ok_and(|r| r.is_ok())
    }

    /// A trigger installed outside a round (a CREATE TABLE relayed through capgate, once its
    /// transaction committed).
    pub fn note_installed(&self, table: TableName, mode: CaptureMode) {
        self.last.send_modify(|last| {
            let mut r = last.as_deref().cloned().unwrap_or_default();
            r.failed.retain(|(t, _)| *t != table);
            r.captured.insert(table, mode);
            *last = Some(Arc::new(r));
        });
    }

    fn publish(&self, done: Reconciled) {
        self.last.send_replace(Some(Arc::new(done)));
    }
}

/// Runs until dropped (abort the task): rounds at start, on policy change and every PERIOD.
/// `writing`: the sites that take writes (this one among them), sorted.
pub async fn run(primary: Upstream, site: String, writing: Vec<String>, policy: Arc<PolicyHandle>, state: Arc<CaptureState>) {
    let mut client: Option<(tokio_postgres::Client, crate::sites::AbortOnDrop<()>)> = None;
    let mut installed = false;
    let mut version = None;
    let mut last_round = Instant::now() - PERIOD;
    let mut reported: Vec<(String, String)> = Vec::new();
    // Tables whose sequence-fed keys were checked (once each for the life of the process).
    let mut keys_checked: BTreeSet<TableName> = BTreeSet::new();
    loop {
        let current = policy.current();
        let due = version != Some(current.version) || last_round.elapsed() >= PERIOD;
        if due {
            let round = async {
                if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                    let (c, task) =
                        primary.client_with_task("capgate capture").await.map_err(|e| format!("cannot connect to the primary: {e}"))?;
                    client = Some((c, crate::sites::AbortOnDrop(task)));
                    installed = false;
                }
                let Some((c, _)) = &client else { return Err("no connection".to_owned()) };
                if !installed {
                    install_primary(c).await.map_err(|e| {
                        format!("installing the capgate schema on the primary: {}", crate::backend::postgres::db_error_text(&e))
                    })?;
                    // The site a `latest` table's local writes are recorded as (decision 0019).
                    let name = "INSERT INTO capgate.local_site (name) VALUES ($1) ON CONFLICT (one) DO UPDATE SET name = EXCLUDED.name";
                    c.execute(name, &[&site])
                        .await
                        .map_err(|e| format!("recording the site name on the primary: {}", crate::backend::postgres::db_error_text(&e)))?;
                    installed = true;
                }
                // What the other sites' check-config compares their policy with.
                let fingerprint = "UPDATE capgate.local_site SET policy = $1 WHERE policy IS DISTINCT FROM $1";
                c.execute(fingerprint, &[&current.fingerprint()])
                    .await
                    .map_err(|e| format!("recording the policy on the primary: {}", crate::backend::postgres::db_error_text(&e)))?;
                reconcile(c, &current).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(ROUND_DEADLINE, round).await {
                Ok(Ok(done)) => {
                    version = Some(current.version);
                    last_round = Instant::now();
                    for (table, mode) in &done.installed {
                        info!(%table, mode = mode.as_str(), "capture trigger installed");
                    }
                    for table in &done.removed {
                        info!(%table, "capture trigger removed (the table is local now)");
                    }
                    let failed: Vec<(String, String)> = done.failed.iter().map(|(t, e)| (t.to_string(), e.clone())).collect();
                    for (table, why) in &failed {
                        if !reported.contains(&(table.clone(), why.clone())) {
                            warn!(%table, "{why}; its writes are not replicated until this is fixed");
                        }
                    }
                    reported = failed;
                    let unchecked: Vec<TableName> = done.captured.keys().filter(|t| !keys_checked.contains(*t)).cloned().collect();
                    if let Some((c, _)) = client.as_ref().filter(|_| writing.len() > 1 && !unchecked.is_empty()) {
                        warn_sequence_keys(c, &unchecked, &writing, &site).await;
                    }
                    keys_checked.extend(unchecked);
                    state.publish(done);
                }
                Ok(Err(e)) => {
                    warn!("capture triggers: {e}; retrying");
                    client = None;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(_) => {
                    warn!("capture triggers: a round did not finish within {ROUND_DEADLINE:?}; retrying");
                    client = None;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Logs, once per table and column, a key column that takes its values from a sequence every
/// writing site steps through alike (the rows inserted at two sites would collide): the same
/// text `capgate check-config --connect` prints, remedy included.
async fn warn_sequence_keys(client: &tokio_postgres::Client, tables: &[TableName], writing: &[String], site: &str) {
    let check = sequence_key_warnings(client, tables, writing, site);
    match tokio::time::timeout(ROUND_DEADLINE, check).await {
        Ok(warnings) => {
            for w in warnings {
                warn!(table = %w.table, column = %w.column, "{}", w.message);
            }
        }
        Err(_) => warn!("checking the key sequences of {} table(s) did not finish within {ROUND_DEADLINE:?}", tables.len()),
    }
}

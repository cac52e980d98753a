//! Carried DDL statements a replica missed, brought to it when no shipper runs (decision
//! 0040, "a missed sync step").
//!
//! A sync table's statement that a replica failed in its sync step (a report there held the
//! table's metadata lock past the wait; the replica went away mid-statement) stays in the
//! change log as `S`. The shipper carries it when the policy has an async or bounded rule;
//! with sync rules only no shipper runs (it would need grants such a policy does not), so
//! the maintenance loop does it here every few seconds: each replica gets the statements
//! it has not settled, in capture order, a table's later ones only after its earlier ones
//! (`store::mysql::ddl_catchup`). Until then sync commits writing the table may be refused
//! there, never applied differently.

use mysql_async::prelude::Queryable;
use tracing::{info, warn};

use crate::config::DbUrl;
use crate::store::mysql::ddl::Step;
use crate::store::mysql::ddl_catchup;
use crate::store::mysql::xa;

/// How long a round's statement may wait for a replica's locks: a report holding the table
/// makes the round give up and try again at the next one rather than hold the loop.
const LOCK_WAIT_SECONDS: u32 = 5;

/// The deadline of one replica's part of a round.
const REPLICA_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// One round: the statements in `primary`'s change log that each of `replicas` has not
/// settled run there (`origin`: this site). Nothing to do costs one query on the primary
/// while the change log holds no carried statement; once it holds some (with sync rules only
/// nothing prunes them), a connection to each replica and three reads there, no write.
pub async fn round(primary: &DbUrl, origin: &str, replicas: &[(String, DbUrl)]) -> Result<(), String> {
    let mut conn = xa::connect(primary).await.map_err(|e| e.to_string())?;
    let pending = ddl_catchup::listed(&mut conn, None, None, 0).await.map_err(|e| e.to_string());
    let _ = conn.disconnect().await;
    let pending = pending?;
    if pending.is_empty() {
        return Ok(());
    }
    for (name, url) in replicas {
        let caught = async {
            let mut replica = xa::connect(url).await?;
            replica.query_drop(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")).await?;
            let caught = ddl_catchup::catch_up(&mut replica, origin, &pending, LOCK_WAIT_SECONDS).await;
            let _ = replica.disconnect().await;
            caught
        };
        match tokio::time::timeout(REPLICA_DEADLINE, caught).await {
            Ok(Ok(steps)) => {
                for (seq, tbl, step) in steps {
                    match step {
                        Step::Ran => info!(replica = %name, table = %tbl, seq, "a carried DDL statement the replica had missed ran there"),
                        Step::AlreadyDone => {}
                        Step::Failed(e) | Step::Busy(e) => warn!(
                            replica = %name, table = %tbl, seq,
                            "a carried DDL statement the replica missed still does not run there ({e}); retried in a few seconds — \
                             until it runs, sync commits that write the table may be refused there"
                        ),
                    }
                }
            }
            Ok(Err(e)) => warn!(replica = %name, "carrying missed DDL statements: {e}"),
            Err(_) => warn!(replica = %name, "carrying missed DDL statements did not finish within {REPLICA_DEADLINE:?}"),
        }
    }
    Ok(())
}

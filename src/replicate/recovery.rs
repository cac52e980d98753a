//! Recovery of sync-mode two-phase commits: resolves the transactions capgate prepared on a
//! replica whose coordinator did not finish (the process crashed, or the replica was cut
//! off between `PREPARE TRANSACTION` and `COMMIT PREPARED`).
//!
//! The rule is presumed abort, with a fence (decision 0009). The coordinator writes the gid
//! into `capgate.decisions` (committed = true) inside the client's primary transaction before
//! it prepares the replicas; the record exists once the primary transaction committed:
//!
//! - a committed decision → `COMMIT PREPARED` on the replica;
//! - no decision, prepared more than `grace` ago → recovery first records the abort
//!   (committed = false) under the gid. That insert waits for a coordinator whose transaction
//!   still holds the gid uncommitted: if the coordinator commits, the insert finds its
//!   decision and recovery commits the branch; if the insert succeeds, the coordinator's
//!   transaction can never commit (its own insert of the gid conflicts), so `ROLLBACK
//!   PREPARED` is safe whatever the coordinator is doing. A late primary COMMIT and a
//!   recovery rollback can never both happen, whatever the clocks and timeouts;
//! - otherwise the branch is left for a later round (the grace only spares live
//!   coordinators the wait, it is not what makes recovery safe).
//!
//! Decision records are pruned separately ([`prune_decisions`]): only the caller, after
//! looking at every replica, knows that a gid is prepared nowhere any more.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::store::postgres::twophase::quote;

/// The prefix of every prepared transaction capgate creates on a replica:
/// `capgate:<site>:<instance>:<n>`.
pub const GID_PREFIX: &str = "capgate";

/// The prefix shared by the gids of every capgate process of `site`.
pub fn site_prefix(site: &str) -> String {
    format!("{GID_PREFIX}:{site}:")
}

/// What one recovery round did on one replica (gids, in `prepared` order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Decided on the primary: committed on the replica.
    pub committed: Vec<String>,
    /// Not decided and older than the grace: rolled back (presumed abort).
    pub rolled_back: Vec<String>,
    /// Not decided and younger than the grace: left for a later round.
    pub left: Vec<String>,
    /// Resolved by someone else (the coordinator itself, another capgate process) between
    /// the listing and the resolution.
    pub gone: Vec<String>,
}

impl RecoveryReport {
    /// Whether the round changed anything.
    pub fn acted(&self) -> bool {
        !self.committed.is_empty() || !self.rolled_back.is_empty()
    }
}

const LIST_SQL: &str = "SELECT gid, extract(epoch FROM now() - prepared)::float8 \
     FROM pg_catalog.pg_prepared_xacts \
     WHERE starts_with(gid, $1) AND database = pg_catalog.current_database() ORDER BY prepared";

const DECIDED_SQL: &str = "SELECT gid FROM capgate.decisions WHERE gid = ANY ($1) AND committed";

/// The fence: record the abort unless a decision exists, waiting (a bounded time) for a
/// coordinator that holds the gid in its uncommitted transaction. Returns the decision that
/// stands: true = committed.
const FENCE_SQL: &str = "WITH fence AS (INSERT INTO capgate.decisions (gid, origin, committed) VALUES ($1, $2, false) \
     ON CONFLICT (gid) DO NOTHING RETURNING committed) \
     SELECT committed FROM fence UNION ALL SELECT committed FROM capgate.decisions WHERE gid = $1 LIMIT 1";

/// How long the fence waits for a coordinator's transaction before leaving the gid for a
/// later round.
const FENCE_LOCK_TIMEOUT: &str = "2s";

/// Resolves the transactions `site`'s coordinators prepared on `replica` (in the replica
/// client's database), from the decisions recorded on `primary`. Needs the primary's
/// `capgate` schema (see [`crate::replicate::outbox::schema::install_primary`]). Stops at
/// the first error other than a transaction that disappeared meanwhile.
pub async fn recover(primary: &Client, replica: &Client, site: &str, grace: Duration) -> Result<RecoveryReport, tokio_postgres::Error> {
    let prefix = site_prefix(site);
    let prepared: Vec<(String, f64)> = replica
        .query(LIST_SQL, &[&prefix])
        .await?
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Option<f64>>(1).unwrap_or(0.0)))
        .collect();
    let mut report = RecoveryReport::default();
    if prepared.is_empty() {
        return Ok(report);
    }
    let gids: Vec<&str> = prepared.iter().map(|(g, _)| g.as_str()).collect();
    let decided: std::collections::HashSet<String> = primary.query(DECIDED_SQL, &[&gids]).await?.into_iter().map(|r| r.get(0)).collect();
    for (gid, age) in prepared {
        let commit = if decided.contains(&gid) {
            true
        } else if age >= grace.as_secs_f64() {
            match fence(primary, &gid, site).await? {
                Some(committed) => committed,
                None => {
                    report.left.push(gid);
                    continue;
                }
            }
        } else {
            report.left.push(gid);
            continue;
        };
        let (verb, list) = if commit { ("COMMIT", &mut report.committed) } else { ("ROLLBACK", &mut report.rolled_back) };
        match replica.batch_execute(&format!("{verb} PREPARED {}", quote(&gid))).await {
            Ok(()) => list.push(gid),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => report.gone.push(gid),
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// The decision that stands for `gid` after the fence: `Some(true)` committed, `Some(false)`
/// aborted (possibly just now, by this call); `None` when a coordinator's transaction still
/// held the gid after the lock timeout.
async fn fence(primary: &Client, gid: &str, site: &str) -> Result<Option<bool>, tokio_postgres::Error> {
    primary.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT}'")).await?;
    match primary.query_opt(FENCE_SQL, &[&gid, &site]).await {
        Ok(row) => {
            primary.batch_execute("COMMIT").await?;
            Ok(row.map(|r| r.get(0)))
        }
        Err(e) => {
            let _ = primary.batch_execute("ROLLBACK").await;
            if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// Deletes `site`'s decision records older than `older_than` whose gid is not in
/// `still_prepared` (the gids still prepared on ANY replica: a decision must outlive its
/// prepared transaction on every replica, or a replica cut off for longer than
/// `older_than` would roll back a committed transaction). Returns how many were deleted.
pub async fn prune_decisions(
    primary: &Client,
    site: &str,
    still_prepared: &[String],
    older_than: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let sql = "DELETE FROM capgate.decisions WHERE origin = $1 AND starts_with(gid, $2) \
               AND decided_at < now() - make_interval(secs => $3) AND NOT (gid = ANY ($4))";
    let prefix = site_prefix(site);
    let secs = older_than.as_secs_f64();
    primary.execute(sql, &[&site, &prefix, &secs, &still_prepared]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_prefix_ends_with_a_colon() {
        // So site `a` does not resolve site `ab`'s transactions.
        assert_eq!(site_prefix("a"), "capgate:a:");
        assert!(!"capgate:ab:x:1".starts_with(&site_prefix("a")));
    }
}

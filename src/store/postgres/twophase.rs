//! A sync commit's replica side on PostgreSQL: apply the transaction's changes and `PREPARE
//! TRANSACTION` in one round trip; `COMMIT PREPARED` / `ROLLBACK PREPARED` afterwards, off the
//! client's critical path (decision 0009).

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::replicate::coordinator::PrepareFailure;
use crate::sites::postgres::{PgConnector, PgSite};
use crate::sites::{Pool, Pooled};

/// How long a branch capgate gave up on (its PREPARE timed out) is watched for, to roll it
/// back if it prepares late.
const LATE_PREPARE_WATCH: Duration = Duration::from_secs(60);

/// The SQLSTATE the replica's apply function raises when its rows differ from the primary's.
const CONFLICT: &str = "CGC01";

/// `text` as a dollar-quoted literal whose tag does not occur in it.
pub fn dollar_quote(text: &str) -> String {
    let mut tag = String::from("cg");
    while text.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!("${tag}${text}${tag}$")
}

/// A single-quoted literal (for identifiers of capgate's own making: gids, site names).
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Which branch a PREPARE makes.
#[derive(Debug, Clone, Copy)]
pub struct Branch<'a> {
    /// This site (the origin of the changes).
    pub origin: &'a str,
    pub gid: &'a str,
    /// Record the gid as applied on the replica (a quorum commit, whose changes also travel
    /// in the change stream: the stream skips them where the branch committed).
    pub record: bool,
    /// How long the branch may wait for a row lock on the replica before it gives up with a
    /// cross-site lock conflict (see [`yield_wait`]); None: until the deadline.
    pub lock_wait: Option<Duration>,
}

/// The lock wait of a branch from site `origin` on site `replica` (a site that takes writes
/// too), given the prepare `deadline`. Two sites that each hold a row at home and prepare it
/// at the other wait for each other, and no database sees the cycle: the site whose name sorts
/// first yields (its branch waits at most a quarter of the deadline, and its client gets
/// 40P01), so the other one's branch gets the row and commits. Every site decides the same
/// way (decision 0018).
pub fn yield_wait(origin: &str, replica: &str, deadline: Duration) -> Option<Duration> {
    (origin < replica).then(|| (deadline / 4).max(Duration::from_millis(1)))
}

/// The one round trip that prepares a sync commit's branch on a replica. The gid is recorded
/// first: when the stream brought the changes already, the branch fails at once.
pub fn prepare_sql(branch: Branch<'_>, changes: &str) -> String {
    let note = if branch.record {
        format!("SELECT capgate.note_sync_gid({}, {}); ", quote(branch.origin), quote(branch.gid))
    } else {
        String::new()
    };
    let wait = branch.lock_wait.map(|w| format!("SET LOCAL lock_timeout = {}; ", w.as_millis().max(1))).unwrap_or_default();
    format!(
        "BEGIN; SET LOCAL session_replication_role = replica; {wait}{note}\
         SELECT capgate.apply_changes({}, {}::json, 'sync', '{{}}'::json); PREPARE TRANSACTION {}",
        quote(branch.origin),
        dollar_quote(changes),
        quote(branch.gid)
    )
}

/// How fast a replica is assumed to apply a sync transaction's changes at the least: a large
/// transaction gets this much more time than the base deadline (one second per MiB of row
/// images), so a healthy 100,000-row commit is not refused for its size. A silent cut is still
/// answered within the health loop's detection time, whatever the deadline.
const APPLY_BYTES_PER_SECOND: f64 = 1024.0 * 1024.0;

/// The prepare deadline of a sync transaction whose row images are `changes`: the base
/// (five times the slowest replica's partition latency or heartbeat timeout) plus the time to
/// apply them at [`APPLY_BYTES_PER_SECOND`], at most `limit` (unless the base is longer).
pub fn prepare_deadline(base: Duration, changes: &str, limit: Duration) -> Duration {
    (base + Duration::from_secs_f64(changes.len() as f64 / APPLY_BYTES_PER_SECOND)).min(limit.max(base))
}

/// Apply `changes` and prepare `gid` on `site`, within `deadline` and only while the site
/// stays available: a replica that its health loop finds partitioned meanwhile ends the wait
/// at once (a silent cut is answered within the detection time, not the deadline).
pub async fn prepare(site: &PgSite, branch: Branch<'_>, changes: &str, deadline: Duration) -> Result<(), PrepareFailure> {
    let gid = branch.gid;
    let health = site.health().clone();
    let cut = health.wait_for("a partition", deadline, |s| !s.state.is_available());
    // Held outside the attempt, so a partition found meanwhile can still cancel its statement.
    let conn: tokio::sync::OnceCell<Pooled<PgConnector>> = tokio::sync::OnceCell::new();
    let attempt = async {
        let started = std::time::Instant::now();
        let c = site.pool().checkout(deadline).await.map_err(|e| PrepareFailure::Unavailable(e.to_string()))?;
        let c = conn.get_or_init(|| async { c }).await;
        let left = deadline.saturating_sub(started.elapsed());
        let sql = prepare_sql(branch, changes);
        let run = async {
            match c.simple_query(&sql).await {
                // A replica capgate has not set up yet (recovery installs the schema when it
                // first reaches it): install it now and try once more.
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) => {
                    let _ = c.simple_query("ROLLBACK").await;
                    crate::replicate::apply::install_replica(c).await?;
                    c.simple_query(&sql).await
                }
                other => other,
            }
        };
        match c.run("apply and PREPARE TRANSACTION", left, run).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let failure = classify_error(&e);
                if let PrepareFailure::Unavailable(_) = failure {
                    give_up(c, site.pool().clone(), gid);
                }
                Err(failure)
            }
        }
    };
    tokio::select! {
        result = attempt => result,
        Ok(status) = cut => {
            match conn.get() {
                Some(c) => give_up(c, site.pool().clone(), gid),
                None => {
                    let (pool, gid) = (site.pool().clone(), gid.to_owned());
                    tokio::spawn(async move { finish(pool, gid, false, LATE_PREPARE_WATCH).await });
                }
            }
            Err(PrepareFailure::Unavailable(format!("it became {} while preparing", status.state)))
        }
    }
}

/// capgate stopped waiting for a PREPARE that may still complete: cancel the statement, drop
/// the connection, and roll the gid back if it appears (no decision will ever be written for
/// it, so presumed abort allows it; recovery would do the same, but later).
fn give_up(conn: &Pooled<PgConnector>, pool: Pool<PgConnector>, gid: &str) {
    conn.mark_broken();
    conn.cancel_in_background();
    let gid = gid.to_owned();
    tokio::spawn(async move { finish(pool, gid, false, LATE_PREPARE_WATCH).await });
}

/// What a failed prepare means for the client.
fn classify_error(e: &crate::sites::SiteError) -> PrepareFailure {
    let text = e.to_string();
    let Some(db) = db_error(e) else { return PrepareFailure::Unavailable(text) };
    let code = db.code();
    if code.code() == CONFLICT {
        return PrepareFailure::Conflict(db.detail().unwrap_or(db.message()).to_owned());
    }
    if *code == SqlState::LOCK_NOT_AVAILABLE {
        return PrepareFailure::LockConflict(db.message().to_owned());
    }
    if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE && db.message().contains("prepared transactions are disabled") {
        return PrepareFailure::Misconfigured(
            "max_prepared_transactions is 0 on the replica; set it to at least the replica's max_connections and restart it".into(),
        );
    }
    if *code == SqlState::UNDEFINED_FUNCTION || *code == SqlState::INVALID_SCHEMA_NAME {
        return PrepareFailure::Misconfigured(format!(
            "the capgate schema is not installed on the replica yet ({}); capgate installs it when it can reach the replica with a role allowed to create it",
            db.message()
        ));
    }
    if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE || *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN {
        // A table without a primary key, missing, or missing a column on the replica.
        let hint = db.hint().map(|h| format!("; {h}")).unwrap_or_default();
        return PrepareFailure::Misconfigured(format!("{}{hint}", db.message()));
    }
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        return PrepareFailure::Misconfigured(format!(
            "{}; the replica role needs to set session_replication_role (a superuser, or on PostgreSQL 15+ GRANT SET ON PARAMETER session_replication_role)",
            db.message()
        ));
    }
    PrepareFailure::Unavailable(text)
}

/// The server's error inside a replica operation's error, if that is what failed.
pub fn db_error(e: &crate::sites::SiteError) -> Option<&tokio_postgres::error::DbError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = next {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            return pg.as_db_error();
        }
        next = err.source();
    }
    None
}

/// `COMMIT PREPARED` (or `ROLLBACK PREPARED`) `gid` on one replica, retrying for up to `for_at_most`
/// (the replica may be briefly out of reach; a PREPARE capgate gave up on may complete late).
/// A gid that does not exist is done with when committing (recovery got there first); when
/// rolling back, it is looked for in `pg_prepared_xacts` until it appears (a late PREPARE)
/// or the time is up, so that the watch fills no replica log with errors. Whatever is left,
/// recovery resolves from the decision record.
pub async fn finish(pool: Pool<PgConnector>, gid: String, commit: bool, for_at_most: Duration) {
    let verb = if commit { "COMMIT PREPARED" } else { "ROLLBACK PREPARED" };
    let sql = format!("{verb} {}", quote(&gid));
    let look = format!("SELECT 1 FROM pg_catalog.pg_prepared_xacts WHERE gid = {}", quote(&gid));
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        let attempt = async {
            let conn = pool.checkout(Duration::from_secs(5)).await?;
            if !commit {
                let found = conn.run("looking for a late branch", Duration::from_secs(10), conn.simple_query(&look)).await?;
                if !found.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))) {
                    return Ok(false);
                }
            }
            conn.run(verb, Duration::from_secs(10), conn.simple_query(&sql)).await.map(|_| true)
        };
        match attempt.await {
            Ok(true) => return,
            Ok(false) if started.elapsed() < for_at_most => {}
            Ok(false) => return,
            Err(e) if db_error(&e).is_some_and(|db| *db.code() == SqlState::UNDEFINED_OBJECT) && commit => return,
            Err(e) => {
                if started.elapsed() >= for_at_most {
                    if commit {
                        tracing::warn!(%gid, "{verb} failed ({e}); recovery resolves it from the decision record");
                    }
                    return;
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_transaction_gets_time_to_apply() {
        let base = Duration::from_millis(2500);
        let limit = Duration::from_secs(15);
        assert_eq!(prepare_deadline(base, "", limit), base);
        let ten_mib = "x".repeat(10 * 1024 * 1024);
        assert_eq!(prepare_deadline(base, &ten_mib, limit), base + Duration::from_secs(10));
        // Never past half the recovery grace, so recovery never rolls back a live commit.
        assert_eq!(prepare_deadline(base, &ten_mib.repeat(2), limit), limit);
        assert_eq!(prepare_deadline(base, &ten_mib, Duration::from_secs(1)), base);
    }

    #[test]
    fn literals_cannot_be_broken_out_of() {
        assert_eq!(dollar_quote("a"), "$cg$a$cg$");
        assert_eq!(dollar_quote("x $cg$ y"), "$cgx$x $cg$ y$cgx$");
        assert_eq!(quote("it's"), "'it''s'");
        let branch = Branch { origin: "site", gid: "capgate:site:1:2", record: false, lock_wait: None };
        let sql = prepare_sql(branch, r#"[{"new":{"t":"$cg$"}}]"#);
        assert!(sql.ends_with("PREPARE TRANSACTION 'capgate:site:1:2'"), "{sql}");
        assert!(sql.contains("$cgx$[{"), "{sql}");
        assert!(!sql.contains("note_sync_gid"), "{sql}");
        let sql = prepare_sql(Branch { record: true, ..branch }, "[]");
        assert!(sql.contains("SELECT capgate.note_sync_gid('site', 'capgate:site:1:2'); SELECT capgate.apply_changes"), "{sql}");
        let sql = prepare_sql(Branch { lock_wait: Some(Duration::from_millis(625)), ..branch }, "[]");
        assert!(sql.contains("SET LOCAL lock_timeout = 625; SELECT capgate.apply_changes"), "{sql}");
    }

    #[test]
    fn the_site_whose_name_sorts_first_yields() {
        let d = Duration::from_secs(10);
        assert_eq!(yield_wait("east", "west", d), Some(Duration::from_millis(2500)));
        assert_eq!(yield_wait("west", "east", d), None, "the other one waits up to the deadline");
        assert_eq!(yield_wait("a", "a", d), None);
    }
}

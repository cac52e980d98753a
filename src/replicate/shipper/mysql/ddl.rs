//! A carried DDL statement (change `S`, decision 0040) applied on a MySQL replica, alone
//! between two batches: DDL commits implicitly, so it cannot share the transaction that
//! moves the replica's position.
//!
//! The replica's table shape is recorded (`capgate.ddl_steps`, committed) before the
//! statement runs; the position moves past `S` with that record deleted, in one transaction,
//! after it. Applied again after a crash or a cut link between the two, `S` is recognised as
//! done when the replica's shape is no longer the one recorded, or already the primary's
//! shape after the statement (an operator ran it there first), and only the position moves.
//! A statement that fails on the replica is a conflict `ddl_failed`: the table halts (or,
//! with `on_conflict = "skip"`, the statement is skipped and the table's later changes
//! meet the shape they find).

use super::batch::{conflict, BatchError, Outcome};
use crate::classify::TableName;
use crate::policy::OnConflict;
use crate::store::mysql::apply::{ApplyError, Tables};
use crate::store::mysql::ddl::{self, Carried, Step};
use crate::store::mysql::order::Free;
use crate::store::mysql::position::Position;
use crate::store::mysql::ship::{self, Shipped};

use super::super::ConflictPolicy;

/// How long the shipper waits for another step of the table on the replica (a sync table's
/// statement running there) before it tries again after a backoff.
pub const STEP_WAIT_SECS: u32 = 10;

/// Applies `s` (a change `S`) and moves the replica's position from `from` to `to`; the
/// replica's tables, and which of them a batch may regroup by key (decision 0039: the
/// statement may have added a unique key or a foreign key), are read again after it.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    conn: &mut mysql_async::Conn,
    origin: &str,
    s: &Shipped,
    tables: &mut Tables,
    free: &mut Free,
    from: &Position,
    to: &Position,
    on_conflict: &ConflictPolicy,
) -> Result<Outcome, BatchError> {
    let change = &s.change;
    let bad = |why: String| BatchError::Change(ApplyError::BadChange { seq: change.seq, table: change.tbl.clone(), why });
    let carried = Carried::from_json(change.new.as_deref().unwrap_or_default()).map_err(bad)?;
    let table = TableName::parse(&change.tbl).ok_or_else(|| bad("the table name cannot be read".into()))?;
    let mut conflicts = Vec::new();
    match ddl::run_step(conn, origin, change.seq, &table, &carried, STEP_WAIT_SECS).await.map_err(BatchError::Replica)? {
        Step::AlreadyDone => {
            tracing::info!(table = %change.tbl, seq = change.seq, "shipper: a carried DDL statement had run on the replica already; not run again")
        }
        Step::Ran => {}
        // A sync step or the catch-up of a missed one runs on the replica: tried again.
        Step::Busy(why) => return Err(BatchError::Busy(why)),
        Step::Failed(detail) => {
            let resolution = if on_conflict(&change.tbl) == OnConflict::Skip { "skipped" } else { "halted" };
            let detail = format!("the carried statement `{}` failed on the replica: {detail}", carried.ddl);
            let found = conflict(origin, s, "ddl_failed", None, resolution, detail);
            if resolution == "halted" {
                return Ok(Outcome::Halted(Box::new(found)));
            }
            conflicts.push(found);
        }
    }
    let advance = ship::advance_sql(origin, from, to);
    ship::commit_batch(conn, &ddl::end_step_sql(origin, change.seq), &advance).await.map_err(BatchError::Replica)?;
    (*tables, *free) = ship::replica_catalog(conn).await.map_err(BatchError::Tables)?;
    Ok(Outcome::Applied(conflicts))
}

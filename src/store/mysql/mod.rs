//! MySQL and MariaDB as a capgate store (decision 0015).
//!
//! - [`image`]: how each column type travels in a row image, exactly;
//! - [`primary`]: the primary's `capgate` database, session markers, privileges;
//! - [`capture`]: the capture triggers generated per table and kept in step with the policy;
//! - [`apply`]: row images turned back into statements on a replica;
//! - [`replica_setup`]: whether a replica has capgate's functions yet (one unreachable at start is set up later);
//! - [`batched`]: an async batch's statements merged (multi-row INSERT and DELETE, row counts checked from the replies);
//! - [`order`]: an async batch regrouped by key, so that more of it merges;
//! - [`position`], [`ship`], [`resolve`]: async shipping to a replica, exactly once (decision 0021);
//! - [`copy`]: the initial copy of a table entering async replication, and its gate;
//! - [`held`]: a table halted alone on a replica, its changes held until it is resumed;
//! - [`ddl`]: DDL on a replicated table, carried as one change in capture order (decision 0040);
//! - [`ddl_catchup`]: carried statements a replica missed, run there in order;
//! - [`truncate`]: a TRUNCATE of a replicated table, carried as one change in capture order;
//! - [`xa`]: the replica side of a sync commit (XA prepare, commit, recovery).

pub mod apply;
pub mod batched;
pub mod capture;
pub mod copy;
pub mod ddl;
pub mod ddl_catchup;
pub mod grants;
pub mod held;
pub mod image;
pub mod order;
pub mod position;
pub mod primary;
pub mod replica_setup;
pub mod resolve;
pub mod ship;
pub mod truncate;
pub mod xa;

/// ER_NO_SUCH_TABLE: one of capgate's own tables not created on that server yet.
const NO_SUCH_TABLE: u16 = 1146;

/// A read of one of capgate's own tables that may not exist yet, as nothing read. Why: reads
/// that run often (the maintenance loop's round, every prune) must not create the table each
/// time — every `CREATE TABLE IF NOT EXISTS` is a statement in the server's binary log; the
/// code that first writes a table creates it.
pub(crate) fn missing_is_empty<T: Default>(read: Result<T, mysql_async::Error>) -> Result<T, mysql_async::Error> {
    match read {
        Err(mysql_async::Error::Server(e)) if e.code == NO_SUCH_TABLE => Ok(T::default()),
        other => other,
    }
}

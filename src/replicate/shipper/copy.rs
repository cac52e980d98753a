//! Bringing a table into replication: copy it from the primary to the replica at a
//! consistent point, the way PostgreSQL logical replication's initial table sync does.
//!
//! The primary side reads the table with `COPY … TO STDOUT` inside a REPEATABLE READ
//! transaction whose snapshot `S` is recorded; the replica side empties the table and loads it
//! with `COPY … FROM STDIN` in one transaction that also records `S` in `capgate.tables`. The
//! bytes stream from one to the other (memory stays bounded whatever the table's size). After
//! that, a change of the table applies only if its transaction is not visible in `S`: the
//! copy holds every change that is.
//!
//! The copy runs between two ranges of the shipper, or between two parts of one (decision
//! 0022), never during a replica transaction, and `S` is taken after the replica's applied
//! snapshot `A` and the range's end `B` were: every change visible in either is in `S` too, so
//! the copy cannot lose a change that was shipped before it, and the rest of a range under way
//! skips every change of the table (all are visible in `S`).
//!
//! A copy never empties a table that a writing site's rows live in (decision 0028): when the
//! replica's site takes writes of its own (`takes_writes`, or the table there carries
//! capgate's capture trigger) and its table holds rows, they are compared with the primary's
//! at the copy's snapshot: equal, the table is taken in as it is (nothing to load); not
//! equal, the copy is refused and the table halted, to be made equal by an operator and
//! adopted without a copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::{Client, IsolationLevel};

use crate::replicate::apply::explain;

/// The settings both sides use while copying, so text values read back as they were written.
const FIXED_SETTINGS: &str = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; SET LOCAL lc_monetary = 'C'";

/// Why a copy did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The replica cannot take the table (missing, or missing columns, or a column it cannot
    /// load): the table is halted with this reason until an operator resumes it.
    #[error("{0}")]
    Refused(String),
    #[error("copying on the primary: {0}")]
    Primary(String),
    #[error("copying on the replica: {0}")]
    Replica(String),
}

/// Where a copy goes, and what the shipper knows of the replica's site.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// This site's name, the origin recorded in the replica's `capgate.tables`.
    pub origin: &'a str,
    /// The replica's configured name, for messages.
    pub replica_name: &'a str,
    /// The configuration says the replica's site takes writes of its own (`takes_writes`):
    /// its table's rows may be that site's writes, never to be emptied.
    pub takes_writes: bool,
}

/// How long a copy waits for the replica table's lock before trying again later.
const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// Most rows a writing replica's table may hold for a copy to compare it with the primary's
/// (it runs while the table's lock holds that site's writers, within one copy step's
/// deadline); a larger one is refused and adopted by the operator.
const COUNT_CAP: i64 = 1_000_000;

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// The replica's table was emptied (or was empty) and loaded with these rows.
    Loaded(u64),
    /// The table of a writing replica held exactly the primary's rows at the copy's snapshot
    /// (this many): taken in as it is, nothing removed or loaded.
    Equal(u64),
}

/// A table's rows as a value both sides compute alike (under the same settings, over the
/// primary's column list `{list}`): the row count and two sums of 64-bit halves of each row's
/// md5, independent of row order. Equal sums on two sites mean equal rows but for a chance
/// too small to matter — and a false "equal" would remove nothing: it would leave a
/// difference `capgate verify` shows.
fn checksum_sql(list: &str, table: &str) -> String {
    format!(
        "SELECT count(*)::text || ':' || coalesce(sum(('x' || left(h, 16))::bit(64)::bigint::numeric), 0)::text || ':' || \
         coalesce(sum(('x' || right(h, 16))::bit(64)::bigint::numeric), 0)::text \
         FROM (SELECT md5(row_to_json(s)::text) AS h FROM (SELECT {list} FROM {table}) AS s) AS x"
    )
}

/// Whether the replica's table carries capgate's capture trigger: that site's capgate
/// replicates the table's writes there, so the site takes writes of its own.
const CAPTURED_THERE_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = 'capgate_capture')";

/// The non-generated columns of `table` on the primary, quoted, in column order. None: the
/// table no longer exists there.
const COLUMNS_SQL: &str = "SELECT array_agg(quote_ident(a.attname) ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''";

/// Of `$2` (quoted column names), those the replica's `$1` lacks or cannot be written.
const MISSING_SQL: &str = "SELECT coalesce(array_agg(c ORDER BY c), '{}') FROM unnest($2::text[]) AS c \
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = to_regclass($1) AND quote_ident(a.attname) = c \
     AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')";

/// Copies `table` (the name the capture records) and records it as copied; says what it did.
/// `progress` counts rows as they go, for `/status`. Every step is bounded by `deadline` (a
/// stalled stream ends the copy), not the whole copy.
pub async fn copy_table(
    primary: &mut Client,
    replica: &mut Client,
    to: Target<'_>,
    table: &str,
    progress: &AtomicU64,
    deadline: Duration,
) -> Result<Copied, CopyError> {
    let (origin, replica_name) = (to.origin, to.replica_name);
    let p = |e: tokio_postgres::Error| CopyError::Primary(explain(&e));
    let r = |e: tokio_postgres::Error| CopyError::Replica(explain(&e));
    let exists: bool = cell(timed(deadline, replica.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table]), r).await?)?;
    if !exists {
        return Err(CopyError::Refused(format!(
            "table {table} does not exist on replica `{replica_name}`: create it there with the primary's definition, then resume it (capgate resume --replica {replica_name} --table {table})"
        )));
    }
    let columns: Option<Vec<String>> = cell(timed(deadline, primary.query_one(COLUMNS_SQL, &[&table]), p).await?)?;
    let Some(columns) = columns else {
        return Err(CopyError::Primary(format!("table {table} no longer exists on the primary")));
    };
    let missing: Vec<String> = cell(timed(deadline, replica.query_one(MISSING_SQL, &[&table, &columns]), r).await?)?;
    if !missing.is_empty() {
        return Err(CopyError::Refused(format!(
            "table {table} on replica `{replica_name}` lacks column(s) {} (or has them generated): give it the primary's definition, then resume it",
            missing.join(", ")
        )));
    }
    let list = columns.join(", ");
    let mark = "INSERT INTO capgate.tables (origin, tbl, state) VALUES ($1, $2, 'copying') \
                ON CONFLICT (origin, tbl) DO UPDATE SET state = 'copying', error = NULL, snapshot = NULL, since = now()";
    timed(deadline, replica.execute(mark, &[&origin, &table]), r).await?;

    let source = primary.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start();
    let source = timed(deadline, source, p).await?;
    timed(deadline, source.batch_execute(FIXED_SETTINGS), p).await?;
    let snapshot: String = cell(timed(deadline, source.query_one("SELECT pg_current_snapshot()::text", &[]), p).await?)?;
    let target = timed(deadline, replica.transaction(), r).await?;
    // The lock keeps the replica site's writers (and its capgate installing a capture
    // trigger) out until the copy commits: what is checked below stays true.
    // Bounded: a long transaction of that site's would otherwise hold the copy, and every
    // writer queued behind its lock request, for the whole step deadline (tried again later).
    let prepare = format!(
        "{FIXED_SETTINGS}; SET LOCAL session_replication_role = replica; SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {table} IN EXCLUSIVE MODE",
        LOCK_TIMEOUT.as_millis()
    );
    timed(deadline, target.batch_execute(&prepare), refused_or(table, replica_name)).await?;
    let captured_there: bool = cell(timed(deadline, target.query_one(CAPTURED_THERE_SQL, &[&table]), r).await?)?;
    let mut equal = None;
    if to.takes_writes || captured_there {
        let count = format!("SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {COUNT_CAP}) AS t");
        let rows: i64 = cell(timed(deadline, target.query_one(&count, &[]), r).await?)?;
        if rows >= COUNT_CAP {
            return Err(CopyError::Refused(writing_site_refusal(to, table, rows, captured_there)));
        }
        if rows > 0 {
            // That site's rows are never removed; if they are the primary's rows at the
            // copy's snapshot, the copy has nothing to do.
            let sum = checksum_sql(&list, table);
            let here: String = cell(timed(deadline, target.query_one(&sum, &[]), r).await?)?;
            let there: String = cell(timed(deadline, source.query_one(&sum, &[]), p).await?)?;
            if here != there {
                return Err(CopyError::Refused(writing_site_refusal(to, table, rows, captured_there)));
            }
            equal = Some(rows as u64);
        }
        // Empty: nothing of that site's to lose, and the lock keeps it so until the commit.
    } else {
        timed(deadline, target.batch_execute(&format!("DELETE FROM {table}")), refused_or(table, replica_name)).await?;
    }
    let done = match equal {
        Some(rows) => Copied::Equal(rows),
        None => Copied::Loaded(load(&source, &target, table, &list, replica_name, progress, deadline).await?),
    };
    let copied =
        "UPDATE capgate.tables SET state = 'copied', snapshot = $3::text::pg_snapshot, since = now() WHERE origin = $1 AND tbl = $2";
    timed(deadline, target.execute(copied, &[&origin, &table, &snapshot]), r).await?;
    if let Copied::Loaded(_) = done {
        // The rows were replaced: their `latest` records describe rows that are gone. (A
        // table taken in as it is keeps them: they are its rows' real write times.)
        timed(deadline, target.execute("DELETE FROM capgate.latest WHERE tbl = $1", &[&table]), r).await?;
    }
    // What the copy read must be durable on the primary before the replica holds it.
    timed(deadline, source.batch_execute(super::range::DURABLE_SQL), p).await?;
    timed(deadline, source.commit(), p).await?;
    timed(deadline, target.commit(), r).await?;
    Ok(done)
}

/// Streams the primary's rows of `table` (columns `list`) into the replica's.
async fn load(
    source: &tokio_postgres::Transaction<'_>,
    target: &tokio_postgres::Transaction<'_>,
    table: &str,
    list: &str,
    replica_name: &str,
    progress: &AtomicU64,
    deadline: Duration,
) -> Result<u64, CopyError> {
    let p = |e: tokio_postgres::Error| CopyError::Primary(explain(&e));
    let out = timed(deadline, source.copy_out(&format!("COPY (SELECT {list} FROM {table}) TO STDOUT")), p).await?;
    let sink = timed(deadline, target.copy_in(&format!("COPY {table} ({list}) FROM STDIN")), refused_or(table, replica_name)).await?;
    pin_mut!(out);
    pin_mut!(sink);
    loop {
        let chunk = match tokio::time::timeout(deadline, out.next()).await {
            Ok(Some(chunk)) => chunk.map_err(p)?,
            Ok(None) => break,
            Err(_) => return Err(CopyError::Primary(format!("no data from the primary within {deadline:?}"))),
        };
        progress.fetch_add(chunk.iter().filter(|b| **b == b'\n').count() as u64, Ordering::Relaxed);
        timed(deadline, sink.send(chunk), refused_or(table, replica_name)).await?;
    }
    timed(deadline, sink.as_mut().finish(), refused_or(table, replica_name)).await
}

/// Why a table with rows on a writing replica is not copied, and what the operator does.
pub fn writing_site_refusal(to: Target<'_>, table: &str, rows: i64, captured_there: bool) -> String {
    let replica = to.replica_name;
    let count = match rows {
        COUNT_CAP.. => format!("at least {COUNT_CAP} rows (too many to compare with the primary's during a copy)"),
        1 => "1 row that is not the primary's".to_owned(),
        n => format!("{n} rows that are not the primary's"),
    };
    let why = if captured_there {
        "its capgate replicates this table's writes there (the table carries capgate_capture)"
    } else {
        "takes_writes = true in this capgate's configuration"
    };
    format!(
        "table {table} on replica `{replica}` holds {count}, and that site takes writes of its own ({why}): a copy would empty \
         the table and lose them, so it is not copied and stays halted. Make the table equal on both sites (capgate verify \
         --table {table} shows when it is), then adopt it without a copy: {}",
        adopt_command(replica, table)
    )
}

/// The command that adopts `table` for `replica`: the end of a [`writing_site_refusal`], and
/// what `/status` offers as the table's resume command when its error ends with it.
pub fn adopt_command(replica: &str, table: &str) -> String {
    format!("capgate resume --replica {replica} --table {table} --adopt")
}

/// The first column of `row`.
fn cell<T: for<'a> tokio_postgres::types::FromSql<'a>>(row: tokio_postgres::Row) -> Result<T, CopyError> {
    row.try_get(0).map_err(|e| CopyError::Replica(format!("an unexpected answer: {e}")))
}

/// A replica error while loading rows: the replica cannot take this table as it is.
fn refused_or<'a>(table: &'a str, replica_name: &'a str) -> impl Fn(tokio_postgres::Error) -> CopyError + 'a {
    move |e| match e.as_db_error() {
        // A lock not granted in time, a deadlock, a serialization failure: tried again later.
        Some(db) if ["55P03", "40P01", "40001"].contains(&db.code().code()) => CopyError::Replica(explain(&e)),
        Some(_) => CopyError::Refused(format!("copying {table} to replica `{replica_name}` failed: {}", explain(&e))),
        None => CopyError::Replica(explain(&e)),
    }
}

/// `fut` within `deadline`, its error mapped by `map`; a timeout is an error of the same side.
async fn timed<T, F: Fn(tokio_postgres::Error) -> CopyError>(
    deadline: Duration,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    map: F,
) -> Result<T, CopyError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r.map_err(map),
        Err(_) => Err(CopyError::Replica(format!("a copy step did not finish within {deadline:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_copy_names_the_table_the_replica_the_rows_why_and_the_remedy() {
        let to = Target { origin: "east", replica_name: "west", takes_writes: true };
        let said = writing_site_refusal(to, "public.cart", 1, false);
        assert!(
            said.starts_with("table public.cart on replica `west` holds 1 row that is not the primary's, and that site takes writes of its own (takes_writes = true")
        );
        assert!(said.ends_with("capgate resume --replica west --table public.cart --adopt"), "{said}");
        assert!(said.contains("capgate verify --table public.cart"), "{said}");
        let many = writing_site_refusal(to, "public.cart", COUNT_CAP, true);
        assert!(many.contains("holds at least 1000000 rows") && many.contains("carries capgate_capture"), "{many}");
        assert!(writing_site_refusal(to, "public.cart", 7, false).contains("holds 7 rows that are not the primary's"));
    }
}

//! Which tables a shipper ships, and where each is in its life on the replica
//! (`capgate.tables`): copied (with the copy's snapshot), being copied, or halted with the
//! exact error. The replica holds this state so that it commits with the rows it describes.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

/// A table's state on the replica, for one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableState {
    /// An initial copy is under way.
    Copying,
    /// Copied; its changes ship.
    Copied,
    /// Stopped until an operator resumes it: an apply failed or hit a `halt` conflict, or the
    /// replica lacks the table.
    Halted,
}

impl TableState {
    fn parse(s: &str) -> Option<TableState> {
        match s {
            "copying" => Some(TableState::Copying),
            "copied" => Some(TableState::Copied),
            "halted" => Some(TableState::Halted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TableState::Copying => "copying",
            TableState::Copied => "copied",
            TableState::Halted => "halted",
        }
    }
}

/// One table's state as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableStatus {
    pub state: TableState,
    /// Copied: the primary snapshot the copy was taken at, while it still filters changes.
    pub snapshot: Option<String>,
    /// Halted: what failed, as the replica said it.
    pub error: Option<String>,
    /// Copying: rows copied so far.
    pub copied_rows: Option<u64>,
}

/// The replica's table states for `origin`.
pub async fn read(replica: &Client, origin: &str) -> Result<BTreeMap<String, TableStatus>, tokio_postgres::Error> {
    let rows = replica.query("SELECT tbl, state, snapshot::text, error FROM capgate.tables WHERE origin = $1", &[&origin]).await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let state: String = row.try_get(1)?;
        if let Some(state) = TableState::parse(&state) {
            out.insert(row.try_get(0)?, TableStatus { state, snapshot: row.try_get(2)?, error: row.try_get(3)?, copied_rows: None });
        }
    }
    Ok(out)
}

/// Records that `table` is halted, with the error, in its own replica transaction.
pub async fn halt(replica: &Client, origin: &str, table: &str, error: &str) -> Result<(), tokio_postgres::Error> {
    let sql = "INSERT INTO capgate.tables (origin, tbl, state, error) VALUES ($1, $2, 'halted', $3) \
               ON CONFLICT (origin, tbl) DO UPDATE SET state = 'halted', error = EXCLUDED.error, snapshot = NULL, since = now()";
    replica.execute(sql, &[&origin, &table, &error]).await.map(|_| ())
}

/// Forgets `table` (resume: it is copied again). Returns whether the replica knew it.
pub async fn forget(replica: &Client, origin: &str, table: &str) -> Result<bool, tokio_postgres::Error> {
    let n = replica.execute("DELETE FROM capgate.tables WHERE origin = $1 AND tbl = $2", &[&origin, &table]).await?;
    Ok(n > 0)
}

/// The tables the primary captures, by the name the capture records (`capgate_capture`'s
/// second argument), split by capture mode: `(async, sync)`. Async (and bounded) tables are
/// copied before their changes ship; sync tables are kept equal by two-phase commit, and only
/// their writes made around capgate travel through the change stream.
const CAPTURED_SQL: &str = "WITH t AS (SELECT tgargs AS a FROM pg_catalog.pg_trigger WHERE tgname = 'capgate_capture'), \
     p AS (SELECT a, position('\\x00'::bytea IN a) AS n1 FROM t), \
     q AS (SELECT a, n1, substring(a FROM n1 + 1) AS rest FROM p WHERE n1 > 1) \
     SELECT convert_from(substring(a FROM 1 FOR n1 - 1), 'UTF8'), convert_from(substring(rest FROM 1 FOR position('\\x00'::bytea IN rest) - 1), 'UTF8') \
     FROM q WHERE position('\\x00'::bytea IN rest) > 1";

pub async fn captured(primary: &Client) -> Result<(Vec<String>, Vec<String>), tokio_postgres::Error> {
    let (mut async_tables, mut sync_tables) = (Vec::new(), Vec::new());
    for row in primary.query(CAPTURED_SQL, &[]).await? {
        let (mode, table): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        match mode.as_str() {
            "async" | "latest" => async_tables.push(table),
            "sync" => sync_tables.push(table),
            _ => {}
        }
    }
    for list in [&mut async_tables, &mut sync_tables] {
        list.sort();
        list.dedup();
    }
    Ok((async_tables, sync_tables))
}

/// The snapshot each of `tables` began to be captured in (`capgate.capture_since`, written
/// when the capture trigger is installed), as text; a table installed by a capgate older than
/// that record has none.
pub async fn capture_since(primary: &Client, tables: &[String]) -> Result<BTreeMap<String, String>, tokio_postgres::Error> {
    let rows = primary.query("SELECT tbl, snapshot::text FROM capgate.capture_since WHERE tbl = ANY ($1)", &[&tables]).await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Records sync tables the replica does not know yet as copied without copying them (two-phase
/// commit keeps them equal): when one later moves to an async rule it is not copied, which
/// could erase the rows of a sync commit still prepared on the replica. Each is copied "at"
/// the snapshot its capture began in (`since`): a change queued before — by an earlier life
/// of the table, under another origin or rule — is never shipped; every change captured since
/// is (writes made around capgate, a quorum commit's changes for a replica outside it).
pub async fn adopt(
    replica: &Client,
    origin: &str,
    tables: &[String],
    since: &BTreeMap<String, String>,
) -> Result<(), tokio_postgres::Error> {
    let snapshots: Vec<Option<&str>> = tables.iter().map(|t| since.get(t).map(String::as_str)).collect();
    let sql = "INSERT INTO capgate.tables (origin, tbl, state, snapshot) \
               SELECT $1, t, 'copied', s::pg_snapshot FROM unnest($2::text[], $3::text[]) AS u(t, s) ON CONFLICT DO NOTHING";
    replica.execute(sql, &[&origin, &tables, &snapshots]).await.map(|_| ())
}

/// Why an operator's adoption did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The table cannot be adopted as it is (not halted, not replicated as async): answered
    /// to the operator, shipping goes on.
    #[error("{0}")]
    Refused(String),
    #[error("on the primary: {0}")]
    Primary(String),
    #[error("on the replica: {0}")]
    Replica(String),
}

/// Adopts the halted `table` on the replica without copying it (decision 0028): records it as
/// copied at a primary snapshot `S` taken now, made durable first (as a copy's). A change of
/// the table then applies only if its transaction is not visible in `S`: every change
/// committed on the primary before the adoption is taken to be on the replica already (the
/// operator made the table equal), every one committed after ships, once. `S` is taken after
/// the replica's applied snapshot and after the end of any range under way (the shipper is
/// between ranges, or parts, when it adopts), so no change after `S` was skipped while the
/// table was halted. `state` is the table's state the shipper knows. Returns `S`.
pub async fn adopt_halted(
    primary: &mut Client,
    replica: &Client,
    origin: &str,
    replica_name: &str,
    table: &str,
    state: Option<TableState>,
) -> Result<String, AdoptError> {
    let p = |e: tokio_postgres::Error| AdoptError::Primary(crate::replicate::apply::explain(&e));
    let r = |e: tokio_postgres::Error| AdoptError::Replica(crate::replicate::apply::explain(&e));
    if let Some(s @ (TableState::Copied | TableState::Copying)) = state {
        return Err(AdoptError::Refused(format!(
            "{table} is {} on replica `{replica_name}`, not halted: only a halted table is adopted (a copied one already ships)",
            s.as_str()
        )));
    }
    let (async_tables, _) = captured(primary).await.map_err(p)?;
    if !async_tables.iter().any(|t| t == table) {
        return Err(AdoptError::Refused(format!(
            "{table} is not captured as async or bounded on this site's primary (no such table, or no async rule matches it): nothing to adopt"
        )));
    }
    let tx = primary.transaction().await.map_err(p)?;
    let snapshot: String = tx.query_one("SELECT pg_current_snapshot()::text", &[]).await.map_err(p)?.try_get(0).map_err(p)?;
    // What the replica will never be sent must be durable on the primary first.
    tx.batch_execute(super::range::DURABLE_SQL).await.map_err(p)?;
    tx.commit().await.map_err(p)?;
    let sql = "INSERT INTO capgate.tables (origin, tbl, state, snapshot) VALUES ($1, $2, 'copied', $3::text::pg_snapshot) \
               ON CONFLICT (origin, tbl) DO UPDATE SET state = 'copied', snapshot = EXCLUDED.snapshot, error = NULL, since = now() \
               WHERE capgate.tables.state = 'halted'";
    match replica.execute(sql, &[&origin, &table, &snapshot]).await.map_err(r)? {
        1 => Ok(snapshot),
        _ => Err(AdoptError::Refused(format!("{table} is no longer halted on replica `{replica_name}`: not adopted"))),
    }
}

/// `pg_current_snapshot()` and, in that same snapshot, the captured tables not in `listed`
/// (a parameter such as `$2`, the tables the shipper listed): a range must not start while one
/// is missing, since every change in the range belongs to a table whose trigger is visible in
/// the range's snapshot.
pub fn range_snapshot_sql(listed: &str) -> String {
    format!(
        "SELECT pg_current_snapshot()::text, ARRAY(SELECT c.tbl FROM ({CAPTURED_SQL}) AS c(mode, tbl) WHERE c.tbl <> ALL ({listed}::text[]))"
    )
}

/// What a range ships and filters (see [`filters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters {
    /// The tables whose changes the range ships.
    pub ship: Vec<String>,
    /// Copy snapshots that still filter a table's changes, as JSON `{"tbl": "snapshot"}`.
    pub gates: String,
}

/// Which tables a range ships, and what it must filter, given the replica's table states and
/// the tables captured as async. Shipped: the tables that entered
/// replication on this replica — copied, or adopted (sync) — and, without initial copies, the
/// async tables not copied yet. Never the others: halted and copying tables, async tables not
/// copied yet (their copy will contain these changes), and tables this replica never took in
/// (changes queued by an earlier life of a table, before its capture began). Gated: copied
/// tables whose copy snapshot still filters changes (`{"tbl": "snapshot"}`).
pub fn filters(states: &BTreeMap<String, TableStatus>, async_tables: &[String], initial_copy: bool) -> Filters {
    let mut ship: Vec<String> = states.iter().filter(|(_, s)| s.state == TableState::Copied).map(|(t, _)| t.clone()).collect();
    if !initial_copy {
        ship.extend(async_tables.iter().filter(|t| !states.contains_key(*t)).cloned());
    }
    let gates: serde_json::Map<String, serde_json::Value> = states
        .iter()
        .filter(|(_, s)| s.state == TableState::Copied)
        .filter_map(|(t, s)| s.snapshot.clone().map(|snap| (t.clone(), serde_json::Value::String(snap))))
        .collect();
    Filters { ship, gates: serde_json::Value::Object(gates).to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TableState, snapshot: Option<&str>) -> TableStatus {
        TableStatus { state, snapshot: snapshot.map(str::to_owned), error: None, copied_rows: None }
    }

    #[test]
    fn only_tables_taken_in_ship_and_copies_gate() {
        let mut states = BTreeMap::new();
        states.insert("public.a".to_owned(), status(TableState::Copied, Some("10:12:11")));
        states.insert("public.b".to_owned(), status(TableState::Copied, None));
        states.insert("public.c".to_owned(), status(TableState::Halted, None));
        states.insert("public.d".to_owned(), status(TableState::Copying, None));
        let captured = ["public.a", "public.b", "public.c", "public.new"].map(str::to_owned);
        let f = filters(&states, &captured, true);
        assert_eq!(f.ship, vec!["public.a", "public.b"], "halted, copying, not copied yet: left out");
        assert_eq!(f.gates, r#"{"public.a":"10:12:11"}"#);
        assert_eq!(
            filters(&states, &captured, false).ship,
            vec!["public.a", "public.b", "public.new"],
            "without copies, new tables ship at once"
        );
    }
}

//! Applying captured row changes on a replica (decision 0009, "Apply"): the replica's
//! `capgate` schema and `capgate.apply_changes`, which both the sync coordinator (inside the
//! transaction it prepares) and the async shipper (inside the transaction that advances the
//! applied snapshot) call.
//!
//! The work happens in SQL on the replica (`functions.sql`), so a whole batch costs one round
//! trip whatever its size:
//!
//! - changes are grouped per table (tables are independent on the apply session: user
//!   triggers and foreign-key actions are off, `session_replication_role = replica`), in runs
//!   of one operation that keep every row's changes in capture order: where a table's
//!   operations alternate, its changes are grouped by generation (`order.sql`), so a page of
//!   inserts and hot-row updates costs two runs, not one per alternation; a schema change
//!   (`S`) is a barrier that nothing moves across;
//! - the page is parsed once, into jsonb (decision 0034): a table with a `json` or float
//!   column (jsonb keeps neither a json value's text nor a float's -0) also keeps its images'
//!   original text, which its rows are read from;
//! - a run is applied by one bulk statement over `jsonb_populate_record` (inside a
//!   subtransaction), matching rows by primary key and comparing the replica's row with the
//!   old image as `jsonb` (equal values compare equal whatever their text); when that does not
//!   account for every change, or the run repeats a key, it is applied again row by row, which
//!   finds and resolves each conflict;
//! - generated columns are never written; identity columns are written with `OVERRIDING
//!   SYSTEM VALUE`; the image's text is read with the replica column's own input function
//!   under the capture's fixed settings (UTC, ISO dates, …);
//! - conflicts: `insert_exists`, `update_missing`, `update_differs`, `delete_missing`,
//!   `delete_differs`, `missing_column`, `missing_table`. `sync` refuses any of them (`CGC01`,
//!   the conflict as JSON in DETAIL). `async` resolves them per table with `on_conflict`
//!   (`skip`, `halt` → `CGH01`, `overwrite`, `latest`); a schema difference (missing table or
//!   column) is skipped under `skip` and halts otherwise: no new image can fix it.
//!
//! What this module must never do: apply a change without comparing it with the replica's row,
//! or let a conflict pass without recording it (async) or refusing it (sync).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// The replica's tables, one step per schema version (append, never edit a released step).
const REPLICA_MIGRATIONS: &[&str] = &[include_str!("tables.sql"), include_str!("sync_gids.sql"), include_str!("partial_ranges.sql")];

/// The functions, replaced on every install (they hold no data): applying a run of changes,
/// and the order runs apply in with the entry point.
const FUNCTIONS: [&str; 2] = [include_str!("functions.sql"), include_str!("order.sql")];

/// The version of the replica's `capgate` schema this build installs (recorded in
/// `capgate.replica_schema_version`, apart from the primary's version: one database can be a
/// primary and a replica at once).
pub const REPLICA_SCHEMA_VERSION: i32 = REPLICA_MIGRATIONS.len() as i32;

/// SQLSTATE of a conflict in `sync` mode: the commit is refused.
pub const SYNC_CONFLICT: &str = "CGC01";
/// SQLSTATE of a conflict on a table whose `on_conflict` is `halt`.
pub const HALT: &str = "CGH01";
/// SQLSTATE of a stale shipper's `capgate.advance`.
pub const STALE_SNAPSHOT: &str = "CGW01";

/// Why applying changes failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A conflict in `sync` mode (`CGC01`), or on a `halt` table (`CGH01`).
    #[error("{message}")]
    Conflict { message: String, conflict: Box<Conflict>, halted: bool },
    /// Anything else the replica said (a missing privilege, a table without a primary key, a
    /// value the replica's column cannot take, a failed DDL statement, …).
    #[error("{}", explain(.0))]
    Replica(#[from] tokio_postgres::Error),
    #[error("the replica returned conflicts capgate cannot read: {0}")]
    Decode(#[from] serde_json::Error),
}

/// One conflict, as `capgate.apply_changes` reports it (and `capgate.conflicts` holds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub origin: String,
    /// The change's capture order on the origin.
    pub seq: Option<i64>,
    /// The change's capture time on the origin (text, as captured).
    pub at: Option<serde_json::Value>,
    /// `schema.table`, quoted as the capture wrote it.
    pub tbl: String,
    /// `I`, `U`, `D`, `T`.
    pub op: String,
    /// `insert_exists`, `update_missing`, …
    pub kind: String,
    pub old: Option<serde_json::Value>,
    pub new: Option<serde_json::Value>,
    /// The row found on the replica (None when there was none).
    pub replica: Option<serde_json::Value>,
    /// What was done: `skipped`, `overwritten with the new row`, `refused` (sync), `halted`, …
    pub resolution: String,
    /// A sentence saying what differs.
    pub detail: Option<String>,
}

/// Installs (or upgrades) the replica's `capgate` schema: tables migrated from the recorded
/// version, functions replaced. Idempotent, serialized with every other capgate schema install
/// on the database by one advisory lock.
pub async fn install_replica(client: &Client) -> Result<(), tokio_postgres::Error> {
    let result = client.batch_execute(&install_sql()).await;
    if result.is_err() {
        // The script's transaction may be left open and aborted: end it, so the connection
        // stays usable. Best effort: the first error is the one to report.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

fn install_sql() -> String {
    let mut sql = String::from(
        "BEGIN;\n\
         SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('capgate schema install', 0));\n\
         CREATE SCHEMA IF NOT EXISTS capgate;\n\
         CREATE TABLE IF NOT EXISTS capgate.replica_schema_version (\n    \
             one boolean PRIMARY KEY DEFAULT true CHECK (one),\n    \
             version integer NOT NULL,\n    \
             updated_at timestamptz NOT NULL DEFAULT now()\n);\n\
         INSERT INTO capgate.replica_schema_version (version) VALUES (0) ON CONFLICT DO NOTHING;\n",
    );
    for (i, step) in REPLICA_MIGRATIONS.iter().enumerate() {
        let version = i + 1;
        sql.push_str(&format!(
            "DO $migrate$\nBEGIN\n    IF (SELECT version FROM capgate.replica_schema_version) < {version} THEN\n        \
             EXECUTE $step${step}$step$;\n        \
             UPDATE capgate.replica_schema_version SET version = {version}, updated_at = now();\n    \
             END IF;\nEND\n$migrate$;\n"
        ));
    }
    for functions in FUNCTIONS {
        sql.push_str(functions);
    }
    sql.push_str("\nCOMMIT;\n");
    sql
}

/// `on_conflict` of each table for an async apply, as JSON text: `{"<tbl>": "skip", …,
/// "*": default}`.
pub fn on_conflict_json<'a>(tables: impl IntoIterator<Item = (&'a str, &'a str)>, default: &str) -> String {
    let mut map: serde_json::Map<String, serde_json::Value> = tables.into_iter().map(|(t, p)| (t.to_owned(), p.into())).collect();
    map.insert("*".into(), default.into());
    serde_json::Value::Object(map).to_string()
}

/// Whether applies run in `sync` mode (refuse any conflict) or `async` mode (resolve per table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    Sync,
    Async,
}

impl ApplyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyMode::Sync => "sync",
            ApplyMode::Async => "async",
        }
    }
}

/// Calls `capgate.apply_changes` on `client` (which must be inside the transaction the caller
/// commits or prepares) and returns the conflicts it resolved. A sync conflict or a halt comes
/// back as [`ApplyError::Conflict`], with the conflict read from the error's DETAIL.
///
/// `changes` is the JSON text as the primary produced it: never parse and re-serialize it
/// (a parser may round numbers through `f64` or merge duplicate keys of a `json` value).
pub async fn apply_changes(
    client: &Client,
    origin: &str,
    changes: &str,
    mode: ApplyMode,
    on_conflict: &str,
    prepared_wait: Duration,
) -> Result<Vec<Conflict>, ApplyError> {
    const SQL: &str = "SELECT capgate.apply_changes($1, $2::text::json, $3, $4::text::json, make_interval(secs => $5))::text";
    let wait = prepared_wait.as_secs_f64();
    match client.query_one(SQL, &[&origin, &changes, &mode.as_str(), &on_conflict, &wait]).await {
        Ok(row) => {
            let text: String = row.try_get(0)?;
            Ok(serde_json::from_str(&text)?)
        }
        Err(e) => Err(conflict_error(e)),
    }
}

/// A replica error in one line a DBA can act on: the message, SQLSTATE, detail and hint
/// (`tokio_postgres::Error`'s own Display says only "db error").
pub fn explain(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// Reads a `CGC01` / `CGH01` error into [`ApplyError::Conflict`]; other errors stay as they are.
pub fn conflict_error(e: tokio_postgres::Error) -> ApplyError {
    let Some(db) = e.as_db_error() else { return ApplyError::Replica(e) };
    let halted = match db.code().code() {
        SYNC_CONFLICT => false,
        HALT => true,
        _ => return ApplyError::Replica(e),
    };
    match db.detail().map(serde_json::from_str::<Conflict>) {
        Some(Ok(conflict)) => ApplyError::Conflict { message: db.message().to_owned(), conflict: Box::new(conflict), halted },
        _ => ApplyError::Replica(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_step_is_wrapped_once_and_functions_follow() {
        let sql = super::install_sql();
        for step in super::REPLICA_MIGRATIONS {
            assert!(!step.contains("$step$") && !step.contains("$migrate$"));
        }
        assert_eq!(sql.matches("DO $migrate$").count(), super::REPLICA_SCHEMA_VERSION as usize);
        assert!(sql.find("capgate.apply_changes").unwrap() > sql.rfind("$migrate$").unwrap());
        assert!(sql.starts_with("BEGIN;") && sql.trim_end().ends_with("COMMIT;"));
    }

    #[test]
    fn on_conflict_names_each_table_and_a_default() {
        let v = super::on_conflict_json([("public.a", "skip"), ("\"s\".\"b\"", "latest")], "halt");
        let v: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(v, serde_json::json!({"public.a": "skip", "\"s\".\"b\"": "latest", "*": "halt"}));
    }
}

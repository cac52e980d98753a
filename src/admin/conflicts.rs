//! The conflict records: a change that did not fit a replica is recorded there, in that
//! replica's `capgate.conflicts`, with what the shipper knew of it (the statement or the row
//! images, the error, the resolution). `capgate conflicts`, `SHOW CAPGATE CONFLICTS` and the
//! dashboard list them from here, and an operator marks one resolved once handled.
//!
//! Records are read as JSON objects (`to_jsonb` of the row), so every column the replication
//! core records — the table, the operation, the kind, the old and new row images, the
//! replica's row — reaches the operator without this module knowing every column. Marking
//! resolved adds three columns when missing (`resolved_at`, `resolved_by`, `resolved_note`).
//!
//! Every replica is asked under a deadline: a partitioned replica is reported as such, it
//! does not hang the listing. MySQL and MariaDB replicas keep no such table: their
//! conflicts are listed from `conflict_log` ([`super::conflict_log`]).

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::AdminError;
use crate::backend::postgres::Upstream;
use crate::config::{Config, Replica, Scheme};

/// How long asking one replica may take, on top of its URL's connect_timeout.
const QUERY_DEADLINE: Duration = Duration::from_secs(5);

/// One conflict record of one replica.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub replica: String,
    pub id: i64,
    /// Every column of the record, by name.
    pub record: Map<String, Value>,
}

impl Conflict {
    fn field(&self, name: &str) -> Option<String> {
        match self.record.get(name)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => {
                Some(items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect::<Vec<_>>().join(", "))
            }
            other => Some(other.to_string()),
        }
    }

    /// When it was recorded (the replica's clock).
    pub fn at(&self) -> Option<String> {
        self.field("recorded_at").or_else(|| self.field("at"))
    }

    /// The table the change wrote.
    pub fn tables(&self) -> Option<String> {
        self.field("tbl").or_else(|| self.field("tables"))
    }

    /// What kind of conflict: the core's `kind` when it records one, else the SQLSTATE.
    pub fn kind(&self) -> Option<String> {
        self.field("kind").or_else(|| self.field("sqlstate"))
    }

    /// The explanation recorded with it.
    pub fn error(&self) -> Option<String> {
        self.field("detail").or_else(|| self.field("error"))
    }

    /// What the shipper did (`skipped`, `halted` …).
    pub fn resolution(&self) -> Option<String> {
        self.field("resolution")
    }

    pub fn origin(&self) -> Option<String> {
        self.field("origin")
    }

    /// When an operator marked it resolved, if they did.
    pub fn resolved_at(&self) -> Option<String> {
        self.field("resolved_at")
    }

    /// The record's columns other than the summary ones, in name order: the statement or
    /// row images, parameters, counts.
    pub fn details(&self) -> Vec<(String, String)> {
        const SUMMARY: &[&str] =
            &["id", "recorded_at", "at", "origin", "tbl", "tables", "kind", "sqlstate", "detail", "error", "resolution", "resolved_at"];
        let mut out: Vec<(String, String)> = self
            .record
            .iter()
            .filter(|(k, _)| !SUMMARY.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), if let Value::String(s) = v { s.clone() } else { v.to_string() }))
            .collect();
        out.sort();
        out
    }
}

/// The conflicts of every replica, newest first within each, and the replicas that could
/// not be asked.
#[derive(Debug, Default, Serialize)]
pub struct Listing {
    pub conflicts: Vec<Conflict>,
    /// `(replica, why)` for each replica that could not be read.
    pub errors: Vec<(String, String)>,
}

async fn client(replica: &Replica) -> Result<tokio_postgres::Client, String> {
    let upstream = Upstream::new(replica.url.clone()).map_err(|e| format!("its URL's TLS settings: {e}"))?;
    let deadline = replica.url.connect_timeout + QUERY_DEADLINE;
    match tokio::time::timeout(deadline, upstream.client("capgate admin")).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", replica.url.address())),
        Err(_) => Err(format!("no answer from {} within {deadline:?}", replica.url.address())),
    }
}

/// Run `query` on `replica` under the deadline.
async fn rows(replica: &Replica, query: &str, limit: i64) -> Result<Vec<Map<String, Value>>, String> {
    let c = client(replica).await?;
    let exists = "SELECT to_regclass('capgate.conflicts') IS NOT NULL";
    let work = async {
        if !c.query_one(exists, &[]).await?.get::<_, bool>(0) {
            return Ok(Vec::new());
        }
        c.query(query, &[&limit]).await
    };
    let found = tokio::time::timeout(QUERY_DEADLINE, work).await.map_err(|_| format!("no answer within {QUERY_DEADLINE:?}"))?;
    let found = found.map_err(|e| format!("reading capgate.conflicts: {e}"))?;
    Ok(found
        .iter()
        .filter_map(|r| match serde_json::from_str::<Value>(r.get::<_, &str>(0)) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        })
        .collect())
}

fn conflict(replica: &str, record: Map<String, Value>) -> Conflict {
    let id = record.get("id").and_then(Value::as_i64).unwrap_or(0);
    Conflict { replica: replica.to_owned(), id, record }
}

/// The newest `limit` conflicts of each replica (of `only`, when given); `unresolved` leaves
/// out those marked resolved.
/// MySQL / MariaDB replicas have no such table: their conflicts are read from `conflict_log`
/// ([`super::conflict_log`]; none are ever resolved).
pub async fn list(config: &Config, only: Option<&str>, limit: i64, unresolved: bool) -> Listing {
    if config.primary.url.scheme == Scheme::MySql {
        let replicas: Vec<String> = config.replicas.iter().map(|r| r.name.clone()).collect();
        return match &config.conflict_log {
            Some(path) => super::conflict_log::list(path, &replicas, only, limit).await,
            None => Listing {
                conflicts: Vec::new(),
                errors: replicas.into_iter().filter(|r| only.is_none_or(|o| o == r)).map(|r| (r, no_log(config))).collect(),
            },
        };
    }
    let mut listing = Listing::default();
    let query = if unresolved {
        "SELECT to_jsonb(c)::text FROM capgate.conflicts c WHERE to_jsonb(c)->>'resolved_at' IS NULL ORDER BY id DESC LIMIT $1"
    } else {
        "SELECT to_jsonb(c)::text FROM capgate.conflicts c ORDER BY id DESC LIMIT $1"
    };
    for replica in config.replicas.iter().filter(|r| only.is_none_or(|o| o == r.name)) {
        match rows(replica, query, limit).await {
            Ok(records) => listing.conflicts.extend(records.into_iter().map(|r| conflict(&replica.name, r))),
            Err(e) => listing.errors.push((replica.name.clone(), e)),
        }
    }
    listing
}

/// Why the conflicts of MySQL replicas cannot be listed without `conflict_log`.
pub fn no_log(config: &Config) -> String {
    format!(
        "MySQL and MariaDB replicas keep no capgate.conflicts table: capgate records their conflicts only in conflict_log, \
         which {} does not set (set conflict_log = \"conflicts.jsonl\" to keep them; the count since start is in the \
         replicas' conflicts figure)",
        config.file.display()
    )
}

fn replica<'c>(config: &'c Config, name: &str) -> Result<&'c Replica, AdminError> {
    if config.primary.url.scheme == Scheme::MySql {
        let log = config.conflict_log.as_ref().map_or_else(|| "conflict_log (not set)".to_owned(), |p| p.display().to_string());
        return Err(AdminError::Failed(format!(
            "MySQL and MariaDB replicas keep their conflicts in {log}, one JSON line each, not in a table: a conflict there \
             cannot be shown by id or marked resolved; `capgate conflicts list` lists them"
        )));
    }
    config.replicas.iter().find(|r| r.name == name).ok_or_else(|| {
        let names: Vec<&str> = config.replicas.iter().map(|r| r.name.as_str()).collect();
        AdminError::Syntax(format!("no replica `{name}` in {} (replicas: {})", config.file.display(), names.join(", ")))
    })
}

/// One conflict, by replica and id.
pub async fn show(config: &Config, replica_name: &str, id: i64) -> Result<Conflict, AdminError> {
    let r = replica(config, replica_name)?;
    let found = rows(r, "SELECT to_jsonb(c)::text FROM capgate.conflicts c WHERE id = $1", id).await.map_err(AdminError::Unreachable)?;
    found
        .into_iter()
        .next()
        .map(|record| conflict(replica_name, record))
        .ok_or_else(|| AdminError::Failed(format!("replica {replica_name} has no conflict {id}")))
}

/// Mark a conflict resolved by `by`, with a note.
pub async fn resolve(config: &Config, replica_name: &str, id: i64, by: &str, note: &str) -> Result<(), AdminError> {
    let r = replica(config, replica_name)?;
    let c = client(r).await.map_err(AdminError::Unreachable)?;
    let work = async {
        c.batch_execute(
            "ALTER TABLE capgate.conflicts ADD COLUMN IF NOT EXISTS resolved_at timestamptz, \
             ADD COLUMN IF NOT EXISTS resolved_by text, ADD COLUMN IF NOT EXISTS resolved_note text",
        )
        .await?;
        c.execute(
            "UPDATE capgate.conflicts SET resolved_at = now(), resolved_by = $2, resolved_note = $3 WHERE id = $1",
            &[&id, &by, &note],
        )
        .await
    };
    let n = tokio::time::timeout(QUERY_DEADLINE, work)
        .await
        .map_err(|_| AdminError::Unreachable(format!("no answer from replica {replica_name} within {QUERY_DEADLINE:?}")))?
        .map_err(|e| AdminError::Failed(format!("marking conflict {id} of replica {replica_name} resolved: {e}")))?;
    if n == 0 {
        return Err(AdminError::Failed(format!("replica {replica_name} has no conflict {id}")));
    }
    Ok(())
}

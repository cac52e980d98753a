//! Keeping the primary's capture triggers in step with the policy: every table a non-local
//! rule matches carries `capgate_capture` and `capgate_truncate` with its mode; no other
//! table does (decision 0009).
//!
//! Run at start, after every policy reload and after DDL. Each table is changed in its own
//! short transaction: one table capgate may not alter (no TRIGGER privilege, a lock held too
//! long) is reported and retried later without holding up the others.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::Client;

use crate::classify::TableName;
use crate::policy::Policy;

/// How long an install waits for the table's lock before giving up for this round: creating a
/// trigger takes a SHARE ROW EXCLUSIVE lock, which waits for long-running writers.
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

pub use crate::store::{CaptureMode, Reconciled};

/// Why a reconciliation round could not even start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("reading the primary's tables and capture triggers: {0}")]
    Catalog(tokio_postgres::Error),
}

/// Every ordinary and partitioned table outside the system schemas that is not itself a
/// partition (a row trigger on a partitioned table is cloned onto its partitions), with
/// whether it has a primary key, and the capture trigger's arguments where it has one.
const TABLES_SQL: &str = "SELECT n.nspname::text, c.relname::text, c.oid::regclass::text, \
     (SELECT encode(t.tgargs, 'escape') FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'capgate_capture') \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'capgate') AND n.nspname NOT LIKE 'pg_toast%' \
     AND n.nspname NOT LIKE 'pg_temp%'";

/// The tables `policy` replicates among `tables`, with their capture mode.
pub fn wanted<'a>(policy: &Policy, tables: impl IntoIterator<Item = &'a TableName>) -> BTreeMap<TableName, CaptureMode> {
    tables.into_iter().filter_map(|t| CaptureMode::of(&policy.decide_table(t).mode).map(|m| (t.clone(), m))).collect()
}

/// Install, change or remove capture triggers on the primary so they match `policy`.
pub async fn reconcile(client: &Client, policy: &Policy) -> Result<Reconciled, CaptureError> {
    let rows = client.query(TABLES_SQL, &[]).await.map_err(CaptureError::Catalog)?;
    let mut out = Reconciled::default();
    for row in rows {
        let table = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let regclass: String = row.get(2);
        let current = row.get::<_, Option<String>>(3).map(|args| parse_args(&args));
        let want = CaptureMode::of(&policy.decide_table(&table).mode);
        let name = table.to_string();
        let is_current = match (&current, want) {
            (Some((mode, arg_name)), Some(w)) => *mode == Some(w) && arg_name.as_deref() == Some(name.as_str()),
            (None, None) => true,
            _ => false,
        };
        if is_current {
            if let Some(w) = want {
                out.captured.insert(table, w);
            }
            continue;
        }
        let result = match want {
            Some(mode) => {
                change(client, "SELECT capgate.install_capture($1::text::regclass, $2, $3)", &[&regclass, &mode.as_str(), &name]).await
            }
            None => change(client, "SELECT capgate.remove_capture($1::text::regclass)", &[&regclass]).await,
        };
        match (result, want) {
            (Ok(()), Some(mode)) => {
                out.installed.push((table.clone(), mode));
                out.captured.insert(table, mode);
            }
            (Ok(()), None) => out.removed.push(table),
            (Err(e), _) => {
                if let Some((Some(mode), _)) = current {
                    out.captured.insert(table.clone(), mode);
                }
                out.failed.push((table, explain(&e, want.is_some())));
            }
        }
    }
    Ok(out)
}

/// One table's change in its own transaction, waiting at most [`LOCK_TIMEOUT`] for its lock.
async fn change(client: &Client, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = {}", LOCK_TIMEOUT.as_millis())).await?;
    let result = client.execute(sql, params).await;
    match result {
        Ok(_) => client.batch_execute("COMMIT").await,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// A reason a DBA can act on.
fn explain(e: &tokio_postgres::Error, installing: bool) -> String {
    let what = if installing { "install its capture trigger" } else { "remove its capture trigger" };
    match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => format!(
            "capgate cannot {what}: permission denied; the role in [primary].url must own the table or hold the TRIGGER privilege on it (GRANT TRIGGER ON … TO …)"
        ),
        Some(c) if *c == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE => {
            format!("capgate cannot {what} yet: another transaction holds the table's lock for more than {LOCK_TIMEOUT:?}; retrying")
        }
        _ => format!("capgate cannot {what}: {}", crate::backend::postgres::db_error_text(e)),
    }
}

/// `tgargs` as stored: NUL-terminated strings, shown by `encode(…, 'escape')` with `\000`.
fn parse_args(escaped: &str) -> (Option<CaptureMode>, Option<String>) {
    let mut args = escaped.split("\\000").filter(|s| !s.is_empty()).map(unescape);
    let mode = args.next().and_then(|m| CaptureMode::parse(&m));
    (mode, args.next())
}

/// Undo `encode(…, 'escape')`: `\\` is a backslash, `\nnn` an octal byte.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_arguments_read_back() {
        assert_eq!(parse_args("sync\\000public.orders\\000"), (Some(CaptureMode::Sync), Some("public.orders".into())));
        assert_eq!(parse_args("async\\000public.\"We\\\\ird\"\\000"), (Some(CaptureMode::Async), Some("public.\"We\\ird\"".into())));
        assert_eq!(parse_args("async\\000s.\\303\\251t\\000"), (Some(CaptureMode::Async), Some("s.ét".into())));
        assert_eq!(parse_args(""), (None, None));
    }

    #[test]
    fn bounded_tables_capture_as_async_and_local_ones_not_at_all() {
        let text = "default = \"local\"\n[[table]]\nmatch = \"public.acc*\"\nmode = \"sync\"\n[[table]]\nmatch = \"public.cart\"\nmode = \"bounded\"\nmax_lag = \"5s\"\n[[table]]\nmatch = \"public.views\"\nmode = \"async\"\n[[table]]\nmatch = \"public.likes\"\nmode = \"async\"\non_conflict = \"latest\"\n";
        let policy = Policy::parse(text, std::path::Path::new("p.toml")).unwrap();
        let tables = [
            TableName::new("public", "accounts"),
            TableName::new("public", "cart"),
            TableName::new("public", "views"),
            TableName::new("public", "sessions"),
            TableName::new("public", "likes"),
        ];
        let w = wanted(&policy, &tables);
        assert_eq!(w.get(&tables[0]), Some(&CaptureMode::Sync));
        assert_eq!(w.get(&tables[1]), Some(&CaptureMode::Async));
        assert_eq!(w.get(&tables[2]), Some(&CaptureMode::Async));
        assert_eq!(w.get(&tables[3]), None);
        assert_eq!(w.get(&tables[4]), Some(&CaptureMode::Latest), "latest tables record their local writes' times too");
        assert_eq!(parse_args("latest\\000public.likes\\000"), (Some(CaptureMode::Latest), Some("public.likes".into())));
    }
}

//! Capture triggers on a MySQL / MariaDB primary, kept in step with the policy and with each
//! table's columns (decision 0015).
//!
//! MySQL triggers cannot take `NEW.*`, so each replicated table gets three triggers
//! (`AFTER INSERT`, `AFTER UPDATE`, `AFTER DELETE`) generated from its columns in
//! `information_schema` (see [`super::image`] for each type's encoding). A reconciliation
//! round compares every `capgate_*` trigger's body with the body the table's current columns
//! and policy mode call for, and replaces (`CREATE OR REPLACE TRIGGER`, one statement under
//! the table's metadata lock) or drops what differs: the same round installs capture for a
//! table entering the policy, regenerates it after DDL changed the table, and removes it when
//! the table leaves. Run at start, on every policy reload, and after DDL on a replicated
//! table.
//!
//! What a trigger records, inside the writer's transaction, through the routine it calls with
//! the row's images (`capgate.capture` or `capgate.capture_sync`, one statement per row
//! event whatever the table: see `super::primary::ROUTINES` for why a routine):
//! - nothing when the session is capgate's own apply session (`@capgate_apply`);
//! - a sync table written by a capgate client session (`@capgate_session`): a row in
//!   `capgate.sync_changes` for the coordinator to read at COMMIT, and `@capgate_sync = 1`;
//!   outside a transaction (an autocommit statement capgate did not wrap, e.g. from a
//!   procedure it could not see into) it raises an error instead, since that change would
//!   commit on the primary alone;
//! - anything else (async and bounded tables, and sync tables written around capgate): a row
//!   in `capgate.changes`, shipped later.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;

use super::image::{self, quote_ident, quote_literal, Column, ImageError};
use crate::classify::TableName;
use crate::policy::Policy;
pub use crate::store::{CaptureMode, Reconciled};

/// The three row events a table's capture triggers follow, with the trigger name's letter.
const EVENTS: [(&str, char); 3] = [("INSERT", 'i'), ("UPDATE", 'u'), ("DELETE", 'd')];

/// Databases that are never captured.
pub(super) const SYSTEM_SCHEMAS: &str = "'mysql', 'information_schema', 'performance_schema', 'sys', 'capgate'";

/// Why a reconciliation round could not even start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("reading the primary's tables and capture triggers: {0}")]
    Catalog(mysql_async::Error),
    /// Another session holds the table's metadata lock (a long transaction, `LOCK TABLES`)
    /// longer than [`LOCK_WAIT_SECONDS`]: the round stops, to be run again.
    #[error(
        "the capture triggers of {table} could not be changed: another session holds the table locked ({source}); capgate tries \
         again shortly (a long transaction or LOCK TABLES on it delays this)"
    )]
    Busy { table: TableName, source: mysql_async::Error },
}

/// Whether `e` is the server giving up a lock wait (1205).
fn lock_wait(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1205)
}

/// One capture trigger as it should be (or is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub name: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub event: &'static str,
    /// The body, from `BEGIN` to `END`, as `information_schema.TRIGGERS` shows it.
    pub body: String,
}

/// The name of `table`'s capture trigger for `event` (`i`, `u`, `d`): `capgate_i_<table>`,
/// shortened with a hash of the whole name to MySQL's 64 characters.
pub fn trigger_name(table: &str, event: char) -> String {
    let name = format!("capgate_{event}_{table}");
    if name.chars().count() <= 64 {
        return name;
    }
    let hash = table.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let head: String = table.chars().take(36).collect();
    format!("capgate_{event}_{head}_{hash:016x}")
}

/// The marker of `table` in `@capgate_truncate` while capgate carries a TRUNCATE of it
/// (decision 0029): a number (a hash of the name, 63 bits), so the trigger compares it
/// whatever the session's character set.
pub fn truncate_mark(table: &TableName) -> u64 {
    let name = table.to_string();
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) >> 1
}

/// The routine a sync table's triggers call (`capgate.capture_sync`).
const SYNC_ROUTINE: &str = "capture_sync";

/// How a capture trigger with `body` (as `information_schema.TRIGGERS` shows it) records:
/// sync when it calls [`SYNC_ROUTINE`] or, as triggers from before decision 0031 did until
/// the next reconciliation replaces them, inserts into `capgate.sync_changes` itself; async
/// otherwise. The shipper decides by it which tables are copied (never a sync one).
pub fn mode_of_body(body: &str) -> CaptureMode {
    if body.contains(&format!("CALL capgate.{SYNC_ROUTINE}(")) || body.contains("INSERT INTO capgate.sync_changes (") {
        CaptureMode::Sync
    } else {
        CaptureMode::Async
    }
}

/// The three capture triggers of `table` with `columns`, recording as `mode`.
///
/// The delete trigger also carries a TRUNCATE (decision 0029): while the session's
/// `@capgate_truncate` holds this table's [`truncate_mark`], the first row deleted records
/// one change `T` (no images) in place of its own, the others nothing, and
/// `@capgate_truncated` is set so capgate can check that the record was written.
pub fn triggers(table: &TableName, columns: &[Column], mode: CaptureMode) -> Result<Vec<Trigger>, ImageError> {
    if !columns.iter().any(|c| c.key) {
        return Err(ImageError::NoPrimaryKey);
    }
    let new = image::json_object("NEW", columns)?;
    let old = image::json_object("OLD", columns)?;
    let tbl = quote_literal(&table.to_string());
    let routine = match mode {
        // `latest` across writing sites is PostgreSQL-only so far: here it records as async.
        CaptureMode::Async | CaptureMode::Latest => "capture",
        CaptureMode::Sync => SYNC_ROUTINE,
    };
    // What the trigger records for a change `op` with these images.
    let call = |op: &str, old_image: &str, new_image: &str| format!("CALL capgate.{routine}({tbl}, '{op}', {old_image}, {new_image});");
    Ok(EVENTS
        .iter()
        .map(|&(event, letter)| {
            let body = match event {
                "INSERT" => call("I", "NULL", &new),
                "UPDATE" => call("U", &old, &new),
                _ => format!(
                    "IF @capgate_truncate <=> {} THEN IF @capgate_truncated IS NULL THEN {} SET @capgate_truncated = 1; END IF; \
                     ELSE {} END IF;",
                    truncate_mark(table),
                    call("T", "NULL", "NULL"),
                    call("D", &old, "NULL")
                ),
            };
            Trigger {
                name: trigger_name(&table.name, letter),
                event,
                body: format!("BEGIN IF @capgate_apply IS NULL THEN {body} END IF; END"),
            }
        })
        .collect())
}

/// The statement that creates (or replaces) `trigger` on `table`.
pub fn create_sql(table: &TableName, trigger: &Trigger) -> String {
    format!(
        "CREATE OR REPLACE DEFINER = CURRENT_USER TRIGGER {}.{} AFTER {} ON {}.{} FOR EACH ROW {}",
        quote_ident(&table.schema),
        quote_ident(&trigger.name),
        trigger.event,
        quote_ident(&table.schema),
        quote_ident(&table.name),
        trigger.body
    )
}

/// Every base table outside the system databases, with its columns in order.
pub async fn tables(conn: &mut mysql_async::Conn) -> Result<BTreeMap<TableName, Vec<Column>>, CaptureError> {
    let sql = format!(
        "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, LOWER(c.DATA_TYPE), c.COLUMN_KEY = 'PRI', \
         COALESCE(c.GENERATION_EXPRESSION, '') <> '' \
         FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
         ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE t.TABLE_TYPE = 'BASE TABLE' AND c.TABLE_SCHEMA NOT IN ({SYSTEM_SCHEMAS}) \
         ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION"
    );
    let rows: Vec<(String, String, String, String, bool, bool)> = conn.query(sql).await.map_err(CaptureError::Catalog)?;
    let mut out: BTreeMap<TableName, Vec<Column>> = BTreeMap::new();
    for (schema, table, name, data_type, key, generated) in rows {
        out.entry(TableName::new(schema, table)).or_default().push(Column { name, data_type, key, generated });
    }
    Ok(out)
}

/// The columns of one table in order (empty when it does not exist).
pub async fn columns(conn: &mut mysql_async::Conn, table: &TableName) -> Result<Vec<Column>, mysql_async::Error> {
    let rows: Vec<(String, String, bool, bool)> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_KEY = 'PRI', COALESCE(GENERATION_EXPRESSION, '') <> '' \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.name),
        )
        .await?;
    Ok(rows.into_iter().map(|(name, data_type, key, generated)| Column { name, data_type, key, generated }).collect())
}

/// Every capgate trigger on the primary: (schema, table) → (name → body).
async fn installed(conn: &mut mysql_async::Conn) -> Result<BTreeMap<TableName, BTreeMap<String, String>>, CaptureError> {
    let sql = format!(
        "SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS \
         WHERE TRIGGER_NAME LIKE 'capgate\\_%' AND TRIGGER_SCHEMA NOT IN ({SYSTEM_SCHEMAS})"
    );
    let rows: Vec<(String, String, String, String)> = conn.query(sql).await.map_err(CaptureError::Catalog)?;
    let mut out: BTreeMap<TableName, BTreeMap<String, String>> = BTreeMap::new();
    for (schema, table, name, body) in rows {
        out.entry(TableName::new(schema, table)).or_default().insert(name, body);
    }
    Ok(out)
}

/// How long replacing one table's triggers may wait for the table's metadata lock: a session
/// holding it (a long transaction, `LOCK TABLES`) fails the round instead of stalling it; the
/// round is run again.
const LOCK_WAIT_SECONDS: u32 = 10;

/// Install, regenerate or remove capture triggers on the primary so they match `policy`
/// and each table's current columns. The connection's character set must be utf8mb4 (a
/// trigger keeps the one it was created with).
pub async fn reconcile(conn: &mut mysql_async::Conn, policy: &Policy) -> Result<Reconciled, CaptureError> {
    conn.query_drop(format!("SET NAMES utf8mb4, SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")).await.map_err(CaptureError::Catalog)?;
    let tables = tables(conn).await?;
    let mut current = installed(conn).await?;
    let mut out = Reconciled::default();
    for (table, columns) in &tables {
        let have = current.remove(table).unwrap_or_default();
        let Some(mode) = CaptureMode::of(&policy.decide_table(table).mode) else {
            if !have.is_empty() {
                match drop_all(conn, table, have.keys()).await {
                    Ok(()) => out.removed.push(table.clone()),
                    Err(e) if lock_wait(&e) => return Err(CaptureError::Busy { table: table.clone(), source: e }),
                    Err(e) => out.failed.push((table.clone(), format!("removing its capture triggers: {e}"))),
                }
            }
            continue;
        };
        let want = match triggers(table, columns, mode) {
            Ok(w) => w,
            Err(e) => {
                // Stale triggers would record images without the changed columns: remove.
                let _ = drop_all(conn, table, have.keys()).await;
                out.failed.push((table.clone(), e.to_string()));
                continue;
            }
        };
        let stale: Vec<&Trigger> = want.iter().filter(|t| have.get(&t.name) != Some(&t.body)).collect();
        let extra: Vec<&String> = have.keys().filter(|n| !want.iter().any(|t| &t.name == *n)).collect();
        if stale.is_empty() && extra.is_empty() {
            out.captured.insert(table.clone(), mode);
            continue;
        }
        let mut result = Ok(());
        for t in stale {
            result = conn.query_drop(create_sql(table, t)).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = drop_all(conn, table, extra).await;
        }
        match result {
            Ok(()) => {
                out.installed.push((table.clone(), mode));
                out.captured.insert(table.clone(), mode);
            }
            Err(e) if lock_wait(&e) => return Err(CaptureError::Busy { table: table.clone(), source: e }),
            Err(e) => out.failed.push((table.clone(), format!("installing its capture triggers: {e}"))),
        }
    }
    // Triggers left on tables that no longer exist go with their table; nothing to do.
    Ok(out)
}

async fn drop_all<'a>(
    conn: &mut mysql_async::Conn,
    table: &TableName,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), mysql_async::Error> {
    for name in names {
        conn.query_drop(format!("DROP TRIGGER IF EXISTS {}.{}", quote_ident(&table.schema), quote_ident(name))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, data_type: &str, key: bool) -> Column {
        Column { name: name.into(), data_type: data_type.into(), key, generated: false }
    }

    #[test]
    fn names_fit_in_64_characters_and_stay_distinct() {
        assert_eq!(trigger_name("orders", 'i'), "capgate_i_orders");
        let long_a = "a".repeat(60);
        let long_b = format!("{}b", "a".repeat(59));
        let (na, nb) = (trigger_name(&long_a, 'u'), trigger_name(&long_b, 'u'));
        assert!(na.chars().count() <= 64 && nb.chars().count() <= 64);
        assert_ne!(na, nb);
    }

    #[test]
    fn the_delete_trigger_records_one_truncate_while_the_table_is_marked() {
        let t = TableName::new("shop", "orders");
        for mode in [CaptureMode::Async, CaptureMode::Sync] {
            let got = triggers(&t, &[col("id", "int", true)], mode).expect("triggers");
            let delete = &got[2].body;
            let marked = format!("IF @capgate_truncate <=> {} THEN IF @capgate_truncated IS NULL THEN ", truncate_mark(&t));
            assert!(delete.contains(&marked), "{delete}");
            assert!(delete.contains("'shop.orders', 'T', NULL, NULL") && delete.contains("SET @capgate_truncated = 1;"), "{delete}");
            assert!(delete.contains("ELSE ") && delete.contains("'shop.orders', 'D', JSON_OBJECT('id', OLD.`id`), NULL"), "{delete}");
            assert!(!got[0].body.contains("capgate_truncate") && !got[1].body.contains("capgate_truncate"));
        }
    }

    /// The shipper reads a table's mode back from its triggers' bodies: a sync table read as
    /// async was copied over at a replica's first start (its replica rows replaced).
    #[test]
    fn each_triggers_mode_is_read_back_from_its_body() {
        let t = TableName::new("shop", "orders");
        for (mode, read) in
            [(CaptureMode::Sync, CaptureMode::Sync), (CaptureMode::Async, CaptureMode::Async), (CaptureMode::Latest, CaptureMode::Async)]
        {
            for trigger in triggers(&t, &[col("id", "int", true), col("sync_changes", "int", false)], mode).expect("triggers") {
                assert_eq!(mode_of_body(&trigger.body), read, "{}", trigger.body);
            }
        }
        let before_0031 = "BEGIN IF @capgate_apply IS NULL THEN INSERT INTO capgate.sync_changes (conn, at, tbl, op, old_image, new_image) VALUES (1); END IF; END";
        assert_eq!(mode_of_body(before_0031), CaptureMode::Sync);
    }

    #[test]
    fn a_table_without_primary_key_is_refused() {
        let t = TableName::new("shop", "log");
        assert_eq!(triggers(&t, &[col("a", "int", false)], CaptureMode::Async), Err(ImageError::NoPrimaryKey));
    }

    #[test]
    fn triggers_hand_their_images_to_the_capture_routines() {
        let t = TableName::new("shop", "orders");
        let got = triggers(&t, &[col("id", "int", true), col("note", "text", false)], CaptureMode::Sync).expect("triggers");
        assert_eq!(got.iter().map(|t| t.event).collect::<Vec<_>>(), ["INSERT", "UPDATE", "DELETE"]);
        let update = &got[1].body;
        assert_eq!(
            update,
            "BEGIN IF @capgate_apply IS NULL THEN CALL capgate.capture_sync('shop.orders', 'U', JSON_OBJECT('id', OLD.`id`, \
             'note', OLD.`note`), JSON_OBJECT('id', NEW.`id`, 'note', NEW.`note`)); END IF; END"
        );
        let insert = &triggers(&t, &[col("id", "int", true)], CaptureMode::Async).expect("triggers")[0].body;
        assert!(insert.contains("CALL capgate.capture('shop.orders', 'I', NULL, JSON_OBJECT('id', NEW.`id`));"), "{insert}");
        let sync = super::super::primary::ROUTINES[1].1;
        assert_eq!(super::super::primary::ROUTINES[1].0, SYNC_ROUTINE);
        assert!(sync.contains("@@in_transaction = 0 THEN") && sync.contains("INSERT INTO capgate.sync_changes"), "{sync}");
    }
}

//! Applying row images on a MySQL / MariaDB replica (decision 0015).
//!
//! The changes become one SQL text of literal statements, so that a sync commit can send
//! `XA START`, the rows, `XA END` and `XA PREPARE` to a replica as one multi-statement query:
//! one round trip, whatever the number of rows. Each value goes back through the decoding its
//! column's type calls for ([`super::image::Encoding::apply`]), using the *replica's* column
//! types. Rows are matched by primary key; an UPDATE or DELETE also requires the replica's row
//! to equal the old image, and `capgate.expect_rows` turns a wrong row count into an error
//! that names the conflict, which fails the statement text (and, under XA, the prepare).
//!
//! The apply session is marked (`@capgate_apply`, [`super::primary::APPLY_MARKER`]) so the
//! replica's own capture triggers skip these rows, runs in UTC, and is connected with
//! CLIENT_FOUND_ROWS (an UPDATE that sets a row to what it was still counts as matched).

use std::collections::BTreeMap;
use std::fmt::Write;

use mysql_async::prelude::Queryable;
use serde_json::Value;

use super::image::{quote_ident, quote_literal, Column, Encoding};
use crate::classify::TableName;

/// The replica-side function that checks a statement's row count (SIGNAL with the conflict
/// when it is wrong); SQLSTATE `CGC01` as on PostgreSQL replicas.
const EXPECT_ROWS: &str = "CREATE OR REPLACE FUNCTION capgate.expect_rows(got BIGINT, want BIGINT, conflict TEXT) \
     RETURNS BOOLEAN DETERMINISTIC NO SQL \
     BEGIN IF got <> want THEN SIGNAL SQLSTATE 'CGC01' SET MYSQL_ERRNO = 1644, MESSAGE_TEXT = conflict; END IF; RETURN TRUE; END";

/// One captured change, as read from `capgate.changes` or `capgate.sync_changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    /// The table as [`TableName`] displays it.
    pub tbl: String,
    /// `I`, `U`, `D`, or `T` (a TRUNCATE of the table, without images: decision 0029).
    pub op: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl Change {
    /// Changes as one JSON array (what the sync coordinator carries between its actions).
    pub fn to_json(changes: &[Change]) -> String {
        let items: Vec<Value> =
            changes.iter().map(|c| serde_json::json!({"seq": c.seq, "tbl": c.tbl, "op": c.op, "old": c.old, "new": c.new})).collect();
        Value::Array(items).to_string()
    }

    /// The changes of [`Change::to_json`].
    pub fn from_json(text: &str) -> Result<Vec<Change>, String> {
        let items: Vec<Value> = serde_json::from_str(text).map_err(|e| format!("changes are not a JSON array: {e}"))?;
        items
            .into_iter()
            .map(|v| {
                let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                Ok(Change {
                    seq: v.get("seq").and_then(Value::as_u64).ok_or("a change has no seq")?,
                    tbl: s("tbl").ok_or("a change has no tbl")?,
                    op: s("op").ok_or("a change has no op")?,
                    old: s("old"),
                    new: s("new"),
                })
            })
            .collect()
    }
}

/// Why changes cannot be turned into statements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("table {0} does not exist on the replica (conflict missing_table)")]
    MissingTable(String),
    #[error("column `{column}` of {table} does not exist on the replica (conflict missing_column)")]
    MissingColumn { table: String, column: String },
    #[error("change {seq} on {table}: {why}")]
    BadChange { seq: u64, table: String, why: String },
    #[error("installing capgate's functions on the replica: {0}")]
    Install(String),
}

/// The replica's tables: columns in order, by table.
pub type Tables = BTreeMap<TableName, Vec<Column>>;

/// Create the `capgate` database and `capgate.expect_rows` on a replica (idempotent).
pub async fn install(conn: &mut mysql_async::Conn) -> Result<(), ApplyError> {
    create_functions(conn).await.map_err(|e| ApplyError::Install(e.to_string()))
}

/// [`install`], with the server's own error (its code tells a refused privilege from a
/// passing failure: [`super::replica_setup`]).
pub async fn create_functions(conn: &mut mysql_async::Conn) -> Result<(), mysql_async::Error> {
    for sql in ["CREATE DATABASE IF NOT EXISTS capgate", EXPECT_ROWS] {
        conn.query_drop(sql).await?;
    }
    Ok(())
}

/// The statement text that applies `changes` in order, each statement ending in `;`.
pub fn statements(changes: &[Change], tables: &Tables) -> Result<String, ApplyError> {
    let mut out = String::new();
    for change in changes {
        let (target, columns) = target(change, tables)?;
        let image = |text: &Option<String>, which: &str| image_values(change, columns, text, which);
        match change.op.as_str() {
            "I" => {
                let new = image(&change.new, "new")?;
                let names: Vec<String> = new.iter().map(|(c, _)| quote_ident(&c.name)).collect();
                let values: Vec<String> = new.iter().map(|(c, v)| literal(c, v)).collect::<Result<_, _>>().map_err(|w| bad(change, &w))?;
                let _ = write!(out, "INSERT INTO {target} ({}) VALUES ({});", names.join(", "), values.join(", "));
            }
            "U" => {
                let old = image(&change.old, "old")?;
                let new = image(&change.new, "new")?;
                let sets: Vec<String> = new
                    .iter()
                    .map(|(c, v)| literal(c, v).map(|l| format!("{} = {l}", quote_ident(&c.name))))
                    .collect::<Result<_, _>>()
                    .map_err(|w| bad(change, &w))?;
                let matches = row_matches(&old).map_err(|w| bad(change, &w))?;
                let _ = write!(out, "UPDATE {target}{} SET {} WHERE {matches};", by_primary_key(columns, &old), sets.join(", "));
                expect(&mut out, "update_missing_or_differs", change, &old);
            }
            "D" => {
                let old = image(&change.old, "old")?;
                let matches = row_matches(&old).map_err(|w| bad(change, &w))?;
                let _ = write!(out, "DELETE FROM {target} WHERE {matches};");
                expect(&mut out, "delete_missing_or_differs", change, &old);
            }
            "T" => out.push_str(&truncate_sql(&target)),
            other => return Err(bad(change, &format!("unknown operation {other:?}"))),
        }
    }
    Ok(out)
}

/// The statements that carry a TRUNCATE of `target` (change `T`, decision 0029): every row
/// deleted in the batch's own transaction (a real TRUNCATE would commit it implicitly, and
/// the position must move with it), foreign keys not checked — the primary's TRUNCATE either
/// was refused (another table references this one) or ran with the checks off, and a table
/// referencing itself is emptied whatever the order of its rows.
pub(super) fn truncate_sql(target: &str) -> String {
    truncate_statements(target).iter().map(|s| format!("{s};")).collect()
}

/// The statements of [`truncate_sql`], without their `;`.
pub(super) fn truncate_statements(target: &str) -> [String; 3] {
    [
        "SET @capgate_fk = @@foreign_key_checks, foreign_key_checks = 0".to_owned(),
        format!("DELETE FROM {target}"),
        "SET foreign_key_checks = @capgate_fk, @capgate_fk = NULL".to_owned(),
    ]
}

/// The replica table of `change` (quoted) and its columns.
pub(super) fn target<'a>(change: &Change, tables: &'a Tables) -> Result<(String, &'a [Column]), ApplyError> {
    let table = TableName::parse(&change.tbl).ok_or_else(|| bad(change, "the table name cannot be read"))?;
    let columns = tables.get(&table).ok_or_else(|| ApplyError::MissingTable(change.tbl.clone()))?;
    Ok((format!("{}.{}", quote_ident(&table.schema), quote_ident(&table.name)), columns))
}

/// The values of an image (`which`: "old" or "new") in the table's column order.
pub(super) fn image_values<'a>(
    change: &Change,
    columns: &'a [Column],
    text: &Option<String>,
    which: &str,
) -> Result<Vec<(&'a Column, Value)>, ApplyError> {
    let text = text.as_deref().ok_or_else(|| bad(change, &format!("no {which} image")))?;
    let map: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| bad(change, &format!("{which} image is not a JSON object: {e}")))?;
    if let Some(name) = map.keys().find(|n| !columns.iter().any(|c| &c.name == *n && !c.generated)) {
        return Err(ApplyError::MissingColumn { table: change.tbl.clone(), column: name.clone() });
    }
    // In the table's column order (the map is sorted by name).
    Ok(columns.iter().filter_map(|c| map.get(&c.name).map(|v| (c, v.clone()))).collect())
}

pub(super) fn bad(change: &Change, why: &str) -> ApplyError {
    ApplyError::BadChange { seq: change.seq, table: change.tbl.clone(), why: why.to_owned() }
}

/// `SET @capgate_rows = capgate.expect_rows(ROW_COUNT(), 1, '<conflict>')` (`DO` would drop
/// the function's error): the conflict names its kind, the
/// table and the primary key (SIGNAL keeps 128 characters of it).
fn expect(out: &mut String, kind: &str, change: &Change, old: &[(&Column, Value)]) {
    let key: serde_json::Map<String, Value> = old.iter().filter(|(c, _)| c.key).map(|(c, v)| (c.name.clone(), v.clone())).collect();
    let conflict = format!("{kind} {} {}", change.tbl, Value::Object(key));
    let _ = write!(out, "SET @capgate_rows = capgate.expect_rows(ROW_COUNT(), 1, {});", quote_literal(&conflict));
}

/// ` USE INDEX (PRIMARY)` for an UPDATE whose old image names every column of the replica
/// table's primary key (empty otherwise: a replica table without one, or keyed on a column the
/// image lacks). The WHERE clause ([`row_matches`]) names every column, so MariaDB's range
/// optimizer would otherwise estimate each secondary index it could use (index dives) for a
/// one-row update found by its key: about a tenth of the replica's apply CPU under sysbench
/// (docs/performance.md). Not for DELETE: MySQL refuses index hints in a single-table DELETE.
pub(super) fn by_primary_key(columns: &[Column], old: &[(&Column, Value)]) -> &'static str {
    let mut keys = columns.iter().filter(|c| c.key).peekable();
    if keys.peek().is_some() && keys.all(|k| old.iter().any(|(c, _)| c.name == k.name)) {
        " USE INDEX (PRIMARY)"
    } else {
        ""
    }
}

/// The WHERE clause that finds the row equal to an old image: every column NULL-safe equal.
pub(super) fn row_matches(old: &[(&Column, Value)]) -> Result<String, String> {
    let parts: Vec<String> =
        old.iter().map(|(c, v)| literal(c, v).map(|l| format!("{} <=> {l}", quote_ident(&c.name)))).collect::<Result<_, _>>()?;
    if parts.is_empty() {
        return Err("the old image is empty".into());
    }
    Ok(parts.join(" AND "))
}

/// One image value as SQL that yields the column's value on the replica.
pub(super) fn literal(column: &Column, value: &Value) -> Result<String, String> {
    let encoding = Encoding::of(column).map_err(|e| e.to_string())?;
    let text = match value {
        Value::Null => return Ok("NULL".into()),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => u8::from(*b).to_string(),
        other => return Err(format!("column `{}`: unexpected value {other}", column.name)),
    };
    let (expr, replaced) = encoding.apply(Some(&text));
    let bound = match (replaced, value) {
        (Some(r), _) => quote_literal(r),
        (None, Value::Number(_) | Value::Bool(_)) => text,
        (None, _) => quote_literal(&text),
    };
    Ok(expr.replacen('?', &bound, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Tables {
        let col = |name: &str, data_type: &str, key: bool| Column { name: name.into(), data_type: data_type.into(), key, generated: false };
        BTreeMap::from([(
            TableName::new("shop", "t"),
            vec![col("id", "int", true), col("b", "blob", false), col("ts", "timestamp", false), col("s", "varchar", false)],
        )])
    }

    fn change(op: &str, old: Option<&str>, new: Option<&str>) -> Change {
        Change { seq: 1, tbl: "shop.t".into(), op: op.into(), old: old.map(Into::into), new: new.map(Into::into) }
    }

    #[test]
    fn values_decode_by_the_replica_column_type() {
        let sql = statements(&[change("I", None, Some(r#"{"id": 1, "b": "00FF", "ts": "0.000000", "s": "it's \\ ok"}"#))], &tables());
        assert_eq!(
            sql,
            Ok("INSERT INTO `shop`.`t` (`id`, `b`, `ts`, `s`) VALUES (1, UNHEX('00FF'), '0000-00-00 00:00:00', \
                CONCAT('it''s ', CHAR(92 USING utf8mb4), ' ok'));"
                .into())
        );
    }

    #[test]
    fn updates_and_deletes_check_the_old_row() {
        let sql = statements(&[change("D", Some(r#"{"id": 7, "b": null, "ts": "12.500000", "s": "x"}"#), None)], &tables()).expect("sql");
        assert!(sql.starts_with(
            "DELETE FROM `shop`.`t` WHERE `id` <=> 7 AND `b` <=> NULL AND `ts` <=> FROM_UNIXTIME(CAST('12.500000' AS DECIMAL(20,6))) AND `s` <=> 'x';"
        ));
        assert!(
            sql.ends_with(r#"SET @capgate_rows = capgate.expect_rows(ROW_COUNT(), 1, 'delete_missing_or_differs shop.t {"id":7}');"#),
            "{sql}"
        );
    }

    #[test]
    fn a_truncate_empties_the_table_in_the_same_transaction() {
        let sql = statements(&[change("T", None, None)], &tables()).expect("sql");
        assert_eq!(
            sql,
            "SET @capgate_fk = @@foreign_key_checks, foreign_key_checks = 0;DELETE FROM `shop`.`t`;\
             SET foreign_key_checks = @capgate_fk, @capgate_fk = NULL;"
        );
    }

    #[test]
    fn changes_travel_as_one_json_array() {
        let all = vec![change("I", None, Some(r#"{"id": 1}"#)), change("D", Some(r#"{"id": 1}"#), None)];
        assert_eq!(Change::from_json(&Change::to_json(&all)), Ok(all));
    }

    #[test]
    fn unknown_tables_and_columns_are_conflicts() {
        let mut c = change("I", None, Some(r#"{"id": 1, "extra": 2}"#));
        assert_eq!(statements(&[c.clone()], &tables()), Err(ApplyError::MissingColumn { table: "shop.t".into(), column: "extra".into() }));
        c.tbl = "shop.gone".into();
        assert_eq!(statements(&[c], &tables()), Err(ApplyError::MissingTable("shop.gone".into())));
    }
}

//! One batch: read from the primary's outbox, rendered into one multi-statement simple query,
//! applied to the replica in one implicit transaction together with the watermark.
//!
//! Why one simple query with the parameters inlined rather than a pipeline of extended-
//! protocol queries: tokio-postgres's extended queries send binary parameters only and
//! prepare (a round trip) per distinct statement, whereas the outbox holds whatever the
//! client sent (text or binary); and a simple query with several statements is one implicit
//! transaction, so an error anywhere leaves nothing behind — no ROLLBACK round trip. Each
//! captured statement runs inside `capgate.apply()` on the replica, which compares the row
//! count and records conflicts there, so the whole batch costs one round trip even when
//! statements conflict (except under `halt`, see [`apply_halted`]).

use std::collections::HashMap;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::literal::{inline, param_literal, quote};
use crate::policy::OnConflict;

/// One outbox row.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub seq: i64,
    pub id: i64,
    pub statement: String,
    pub param_types: Vec<u32>,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Vec<u8>>>,
    pub settings: String,
    pub row_count: Option<i64>,
    pub tables: Vec<String>,
}

impl Row {
    fn size(&self) -> usize {
        self.statement.len() + self.settings.len() + self.params.iter().map(|p| p.as_ref().map_or(4, Vec::len)).sum::<usize>()
    }
}

const COLUMNS: &str = "seq, id, statement, param_types, param_formats, params, settings::text, row_count, tables";

fn to_row(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    Ok(Row {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        statement: r.try_get(2)?,
        param_types: r.try_get(3)?,
        param_formats: r.try_get(4)?,
        params: r.try_get(5)?,
        settings: r.try_get(6)?,
        row_count: r.try_get(7)?,
        tables: r.try_get(8)?,
    })
}

/// The next whole transactions after `after`: at most `max_rows` rows and about `max_bytes`
/// bytes, except that a single transaction larger than that is returned whole (a replica
/// transaction never holds part of a primary transaction).
pub(crate) async fn fetch(
    primary: &Client,
    origin: &str,
    after: i64,
    max_rows: usize,
    max_bytes: usize,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM capgate.outbox WHERE origin = $1 AND seq > $2 ORDER BY seq, id LIMIT $3");
    // One row more than the batch may hold: it tells whether the last transaction is whole.
    let max_rows = max_rows.max(1);
    let limit = max_rows as i64 + 1;
    let mut rows = Vec::new();
    for r in primary.query(&sql, &[&origin, &after, &limit]).await? {
        rows.push(to_row(&r)?);
    }
    let Some(first_seq) = rows.first().map(|r| r.seq) else {
        return Ok(rows);
    };
    // Cut at the byte budget, never inside the first transaction.
    let mut bytes = 0;
    let mut keep = rows.len().min(max_rows);
    for (i, r) in rows.iter().enumerate().take(keep) {
        bytes += r.size();
        if bytes > max_bytes && r.seq != first_seq {
            keep = i;
            break;
        }
    }
    // Whether the last transaction kept is whole: the next row read belongs to another
    // one, or there is no next row (the extra row read makes that certain).
    let complete = match rows.get(keep) {
        Some(next) => keep > 0 && next.seq != rows[keep - 1].seq,
        None => true,
    };
    rows.truncate(keep);
    if complete {
        return Ok(rows);
    }
    let last = rows.last().map_or(first_seq, |r| r.seq);
    if last != first_seq {
        rows.retain(|r| r.seq != last);
        return Ok(rows);
    }
    // One transaction larger than the limit: the batch is that transaction, whole.
    let sql = format!("SELECT {COLUMNS} FROM capgate.outbox WHERE origin = $1 AND seq = $2 ORDER BY id");
    let mut whole = Vec::new();
    for r in primary.query(&sql, &[&origin, &last]).await? {
        whole.push(to_row(&r)?);
    }
    Ok(whole)
}

/// `format_type()` names of the primary's type oids, cached per shipper session (a type's
/// oid differs between sites; its name does not).
#[derive(Default)]
pub(crate) struct TypeNames(HashMap<u32, String>);

impl TypeNames {
    pub(crate) async fn resolve(&mut self, primary: &Client, rows: &[Row]) -> Result<(), tokio_postgres::Error> {
        let mut missing: Vec<u32> =
            rows.iter().flat_map(|r| r.param_types.iter().copied()).filter(|o| *o != 0 && !self.0.contains_key(o)).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        for r in primary.query("SELECT t, pg_catalog.format_type(t, NULL) FROM unnest($1::oid[]) AS t", &[&missing]).await? {
            let name: Option<String> = r.try_get(1)?;
            if let Some(name) = name {
                self.0.insert(r.try_get(0)?, name);
            }
        }
        Ok(())
    }
}

/// The row's statement with its parameters inlined, and the literals; or why it cannot be.
fn render(row: &Row, names: &TypeNames) -> Result<(String, Vec<String>), String> {
    let formats = row.param_formats.len();
    if row.param_types.len() != row.params.len() || (formats > 1 && formats != row.params.len()) {
        return Err(format!(
            "{} parameter types and {} formats for {} values",
            row.param_types.len(),
            row.param_formats.len(),
            row.params.len()
        ));
    }
    let mut literals = Vec::with_capacity(row.params.len());
    for (k, value) in row.params.iter().enumerate() {
        let oid = row.param_types[k];
        // As in Bind: no codes = all text, one code = for all parameters.
        let format = match row.param_formats.len() {
            0 => 0,
            1 => row.param_formats[0],
            _ => row.param_formats[k],
        };
        let name = names.0.get(&oid).map(String::as_str);
        if oid != 0 && name.is_none() {
            return Err(format!("parameter ${} has type oid {oid}, unknown on the primary", k + 1));
        }
        literals.push(param_literal(oid, name, format == 1, value.as_deref()).map_err(|e| format!("parameter ${}: {e}", k + 1))?);
    }
    Ok((inline(&row.statement, &literals)?, literals))
}

/// The SQL word for an `on_conflict` setting (what `capgate.apply` expects).
fn policy_word(p: OnConflict) -> &'static str {
    match p {
        OnConflict::Skip => "skip",
        OnConflict::Halt => "halt",
        OnConflict::Overwrite => "overwrite",
        // The statement replay has no row times: `latest` cannot be honoured there.
        OnConflict::Latest => "skip",
    }
}

fn text_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("ARRAY[{}]::text[]", quoted.join(","))
}

/// The batch as one simple query: the watermark moves first (its row lock fences off any
/// other shipper), then one `capgate.apply` per row.
pub(crate) fn batch_sql(
    origin: &str,
    from: i64,
    rows: &[Row],
    names: &TypeNames,
    policy: &(dyn Fn(&[String]) -> OnConflict + Sync),
) -> String {
    let to = rows.last().map_or(from, |r| r.seq);
    let mut sql = format!("SELECT capgate.advance({}, {from}, {to});\n", quote(origin));
    for row in rows {
        let (statement, literals) = match render(row, names) {
            Ok(r) => r,
            // Made to fail on the replica, so it is recorded and resolved like any conflict.
            Err(why) => {
                let message = format!("capgate cannot replay this statement: {why}; statement: {}", row.statement);
                (
                    format!("DO {}", quote(&format!("BEGIN RAISE EXCEPTION '%', {} USING ERRCODE = 'CGP01'; END", quote(&message)))),
                    Vec::new(),
                )
            }
        };
        let expected = row.row_count.map_or("NULL".to_owned(), |n| n.to_string());
        sql.push_str(&format!(
            "SELECT capgate.apply({}, {}, {}, {}, {}, {}, {expected}, {}::jsonb, '{}');\n",
            quote(origin),
            row.seq,
            row.id,
            text_array(&row.tables),
            quote(&statement),
            text_array(&literals),
            quote(&row.settings),
            policy_word(policy(&row.tables)),
        ));
    }
    sql
}

/// What applying a batch did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Committed; the conflicts recorded and skipped on the way (JSON objects).
    Applied { conflicts: Vec<serde_json::Value> },
    /// A `halt` conflict: nothing was committed. `detail` is what `capgate.apply` reported.
    Halt { seq: i64, id: i64, detail: serde_json::Value },
}

/// Sends one batch; an error other than a halt means nothing was committed (or, if the
/// connection broke after the commit, that the watermark says so).
pub(crate) async fn apply(replica: &Client, sql: &str) -> Result<Outcome, tokio_postgres::Error> {
    match replica.simple_query(sql).await {
        Ok(messages) => {
            let conflicts = messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).filter(|t| t.starts_with('{')),
                    _ => None,
                })
                .filter_map(|t| serde_json::from_str(t).ok())
                .collect();
            Ok(Outcome::Applied { conflicts })
        }
        Err(e) => {
            let halt = e
                .as_db_error()
                .filter(|d| d.code().code() == "CGH01")
                .and_then(|d| d.detail())
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
            match halt {
                Some(detail) => {
                    let seq = detail.get("seq").and_then(|v| v.as_i64()).unwrap_or(-1);
                    let id = detail.get("id").and_then(|v| v.as_i64()).unwrap_or(-1);
                    Ok(Outcome::Halt { seq, id, detail })
                }
                None => Err(e),
            }
        }
    }
}

/// A batch being applied: where it starts and how to render it.
#[derive(Clone, Copy)]
pub(crate) struct Batch<'a> {
    pub origin: &'a str,
    /// The replica's watermark the batch moves on from.
    pub from: i64,
    pub rows: &'a [Row],
    pub names: &'a TypeNames,
    pub policy: &'a (dyn Fn(&[String]) -> OnConflict + Sync),
}

/// After a halt at transaction `halt_seq`: applies the transactions before it and records the
/// halting conflict, in one replica transaction. Returns the new watermark and the record.
pub(crate) async fn apply_halted(
    replica: &Client,
    batch: Batch<'_>,
    halt_id: i64,
    detail: &serde_json::Value,
) -> Result<(i64, serde_json::Value), tokio_postgres::Error> {
    let Batch { origin, from, rows, names, policy } = batch;
    let halt_seq = rows.iter().find(|r| r.id == halt_id).map_or(from + 1, |r| r.seq);
    let before: Vec<Row> = rows.iter().filter(|r| r.seq < halt_seq).cloned().collect();
    let mut sql = batch_sql(origin, from, &before, names, policy);
    let row = rows.iter().find(|r| r.id == halt_id);
    let statement = row.map(|r| render(r, names).map(|x| x.0).unwrap_or_else(|_| r.statement.clone())).unwrap_or_default();
    let tables = row.map(|r| r.tables.clone()).unwrap_or_default();
    let expected = row.and_then(|r| r.row_count);
    let actual = detail.get("actual").and_then(|v| v.as_i64());
    let sqlstate = detail.get("sqlstate").and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let error = detail.get("error").and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let opt = |v: Option<i64>| v.map_or("NULL".to_owned(), |n| n.to_string());
    sql.push_str(&format!(
        "INSERT INTO capgate.conflicts (origin, seq, outbox_id, tables, statement, expected_rows, actual_rows, sqlstate, error, resolution) \
         VALUES ({}, {halt_seq}, {halt_id}, {}, {}, {}, {}, {}, {}, 'halted');",
        quote(origin),
        text_array(&tables),
        quote(&statement),
        opt(expected),
        opt(actual),
        quote(&sqlstate),
        quote(&error),
    ));
    replica.simple_query(&sql).await?;
    let record = serde_json::json!({
        "origin": origin, "seq": halt_seq, "id": halt_id, "tables": tables, "statement": statement,
        "expected_rows": expected, "actual_rows": actual, "sqlstate": sqlstate, "error": error, "resolution": "halted",
    });
    Ok((before.last().map_or(from, |r| r.seq), record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(formats: Vec<i16>) -> Row {
        Row {
            seq: 3,
            id: 9,
            statement: "UPDATE t SET v = $1 WHERE k = $2 AND w = $3".into(),
            param_types: vec![25, 23, 0],
            param_formats: formats,
            params: vec![Some(b"x".to_vec()), Some(7i32.to_be_bytes().to_vec()), None],
            settings: "{}".into(),
            row_count: Some(1),
            tables: vec!["public.t".into()],
        }
    }

    #[test]
    fn rows_render_with_their_formats_or_fail_cleanly() {
        let mut names = TypeNames::default();
        names.0.insert(25, "text".into());
        names.0.insert(23, "integer".into());
        let (sql, literals) = render(&row(vec![0, 1, 0]), &names).unwrap();
        assert_eq!(sql, "UPDATE t SET v = (CAST($cg$x$cg$ AS text)) WHERE k = (CAST($cg$7$cg$ AS integer)) AND w = (NULL)");
        assert_eq!(literals.len(), 3);
        assert!(render(&row(vec![0, 1]), &names).is_err(), "two format codes for three values");
        assert!(render(&row(vec![]), &TypeNames::default()).unwrap_err().contains("unknown on the primary"));
        let rows = [row(vec![0, 1, 0])];
        let batch = Batch { origin: "a", from: 2, rows: &rows, names: &names, policy: &|_| OnConflict::Skip };
        let sql = batch_sql(batch.origin, batch.from, batch.rows, batch.names, batch.policy);
        assert!(sql.starts_with("SELECT capgate.advance($cg$a$cg$, 2, 3);\nSELECT capgate.apply($cg$a$cg$, 3, 9, "), "{sql}");
        assert!(sql.trim_end().ends_with(", 1, $cg${}$cg$::jsonb, 'skip');"), "{sql}");
    }
}

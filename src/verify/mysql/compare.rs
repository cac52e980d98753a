//! Comparing one MySQL / MariaDB table between the primary and one replica, in primary-key
//! chunks: the same walk as PostgreSQL's ([`crate::verify::compare`]) and the same
//! [`TableResult`], over mysql_async. Both connections are inside their consistent snapshot.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::sql::{self, Column, Shape};
use crate::classify::TableName;
use crate::verify::compare::Tally;
use crate::verify::{Limits, ProgressFn, RowDifference, TableResult};

/// Compare `table` between `primary` and `replica`, calling `progress` after each chunk.
pub async fn compare_table(
    primary: &mut Conn,
    replica: &mut Conn,
    table: &TableName,
    limits: Limits,
    progress: Option<ProgressFn>,
) -> Result<TableResult, mysql_async::Error> {
    let names = (table.schema.as_str(), table.name.as_str());
    let exists: Option<u64> = replica.exec_first(sql::EXISTS, names).await?;
    if exists.unwrap_or(0) == 0 {
        return Ok(TableResult::MissingOnReplica);
    }
    let columns: Vec<(String, String, Option<String>)> = primary.exec(sql::COLUMNS, names).await?;
    let columns: Vec<Column> = columns.into_iter().map(|(name, t, coll)| Column::of(name, &t, coll.as_deref())).collect();
    let key_names: Vec<String> = primary.exec(sql::PRIMARY_KEY, names).await?;
    let key = key_names.iter().filter_map(|k| columns.iter().find(|c| &c.name == k).cloned()).collect();
    let shape = Shape { table: table.clone(), key, columns };

    if shape.key.is_empty() {
        let q = shape.checksum_query("TRUE");
        let (p, r) = match checksums(primary, replica, &q).await {
            Ok(x) => x,
            Err(message) => return Ok(TableResult::Error { message }),
        };
        return Ok(TableResult::NoPrimaryKey { equal: p == r, rows_primary: p.0, rows_replica: r.0 });
    }

    let estimate = match progress {
        Some(_) => primary.exec_first::<Option<u64>, _, _>(sql::ESTIMATE, names).await?.flatten(),
        None => None,
    };
    let mut lower: Option<Vec<String>> = None;
    let mut tally = Tally::default();
    loop {
        let upper: Option<Vec<String>> = primary
            .query_first::<Row, _>(shape.boundary_query(lower.as_deref(), limits.chunk_rows))
            .await?
            .map(|row| row.unwrap().iter().zip(&shape.key).map(|(v, c)| sql::key_literal(c, v)).collect());
        let range = shape.range(lower.as_deref(), upper.as_deref());
        let q = shape.checksum_query(&range);
        let (p, r) = match checksums(primary, replica, &q).await {
            Ok(x) => x,
            Err(message) => return Ok(TableResult::Error { message }),
        };
        if tally.chunk(&p, &r, table, estimate, progress) {
            tally.rows_differing += pinpoint(primary, replica, &shape, &range, limits.max_differences, &mut tally.differences).await?;
        }
        match upper {
            Some(u) => lower = Some(u),
            None => break,
        }
    }
    Ok(tally.result())
}

/// A chunk's row count and checksum; the error text when some row could not be
/// fingerprinted.
async fn checksum(conn: &mut Conn, query: &str) -> Result<Result<(u64, String), String>, mysql_async::Error> {
    let row: Option<(u64, String)> = conn.query_first(query).await?;
    let Some((rows, sum)) = row else { return Ok(Ok((0, "0".into()))) };
    Ok(match sum.parse::<u128>() {
        Ok(s) if s < sql::UNHASHED => Ok((rows, sum)),
        _ => Err(
            "some rows could not be fingerprinted (the server gave NULL: a row larger than max_allowed_packet?), so the table cannot be compared"
                .to_owned(),
        ),
    })
}

/// Both sides' checksums of one chunk, or why the table cannot be compared.
async fn checksums(primary: &mut Conn, replica: &mut Conn, query: &str) -> Result<((u64, String), (u64, String)), String> {
    match tokio::try_join!(checksum(primary, query), checksum(replica, query)) {
        Ok((Ok(p), Ok(r))) => Ok((p, r)),
        Ok((Err(e), _)) => Err(format!("on the primary: {e}")),
        Ok((_, Err(e))) => Err(format!("on the replica: {e}")),
        Err(e) => Err(format!("{e} (do both sides have the same columns?)")),
    }
}

/// One row of [`Shape::rows_query`]: the key's identity, the fingerprint, the row shown, the
/// key shown.
struct Found {
    fingerprint: String,
    shown: String,
    key: Vec<String>,
}

async fn rows(conn: &mut Conn, query: &str) -> Result<Vec<(String, Found)>, mysql_async::Error> {
    let rows: Vec<Row> = conn.query(query).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut values: Vec<String> = row.unwrap().into_iter().map(text).collect();
            let key = values.split_off(3.min(values.len()));
            let mut values = values.into_iter();
            let id = values.next().unwrap_or_default();
            let fingerprint = values.next().unwrap_or_default();
            let shown = values.next().unwrap_or_default();
            (id, Found { fingerprint, shown, key })
        })
        .collect())
}

/// A text result value as a string (the rows query yields text and hex only).
fn text(v: mysql_async::Value) -> String {
    match v {
        mysql_async::Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
        mysql_async::Value::NULL => "NULL".into(),
        other => other.as_sql(false),
    }
}

/// Find the differing rows of one chunk; returns how many there are, keeping at most `max`
/// of them in `out`. Rows are matched by key as the collation compares keys.
async fn pinpoint(
    primary: &mut Conn,
    replica: &mut Conn,
    shape: &Shape,
    range: &str,
    max: usize,
    out: &mut Vec<RowDifference>,
) -> Result<u64, mysql_async::Error> {
    let q = shape.rows_query(range);
    let (mine, theirs) = tokio::try_join!(rows(primary, &q), rows(replica, &q))?;
    let mut mine: HashMap<String, Found> = mine.into_iter().collect();
    let mut count = 0u64;
    let mut keep = |d: RowDifference, out: &mut Vec<RowDifference>| {
        count += 1;
        if out.len() < max {
            out.push(d);
        }
    };
    for (id, t) in theirs {
        match mine.remove(&id) {
            Some(ours) if ours.fingerprint == t.fingerprint => {}
            Some(ours) => keep(RowDifference { key: ours.key, primary: Some(ours.shown), replica: Some(t.shown) }, out),
            None => keep(RowDifference { key: t.key, primary: None, replica: Some(t.shown) }, out),
        }
    }
    let mut missing: Vec<Found> = mine.into_values().collect();
    missing.sort_by(|a, b| a.key.cmp(&b.key));
    for ours in missing {
        keep(RowDifference { key: ours.key, primary: Some(ours.shown), replica: None }, out);
    }
    Ok(count)
}

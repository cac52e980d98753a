//! The order an async batch's changes are applied in on a replica (issue 15): rows of
//! different keys apply in any order, so a batch is regrouped in *levels* — each change one
//! level above the last earlier change of a key it touches — and each level by table and
//! operation, which turns sysbench's interleaved `UPDATE, UPDATE, DELETE, INSERT` per
//! transaction into long runs that [`super::batched`] merges into multi-row statements.
//!
//! Regrouping is exact only where a row's fate depends on its primary key alone. A table is
//! *free* (regrouped) when on the replica its primary key is made of integer columns (no
//! collation can make two different images the same row), it has no other unique key (a
//! unique value moving between rows would depend on their order), no foreign key either
//! way, and the replica has no triggers other than capgate's own (a trigger may write
//! elsewhere). Every other table's changes — and a free table's changes whose images lack
//! the key, and TRUNCATEs — keep their capture order among themselves: one chain across all
//! such tables. Within a key every change keeps its place, so each statement meets the
//! replica row it would have met in capture order, and a conflict is found as before (the
//! fast path's counts; the change-by-change path applies in capture order).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mysql_async::prelude::Queryable;
use serde_json::Value;

use super::apply::{Change, Tables};
use super::image::Column;
use crate::classify::TableName;

/// The replica's tables whose changes may be regrouped (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Free(pub BTreeSet<TableName>);

/// Integer column types: a key made of them names one row whatever the collations.
const INTEGERS: [&str; 5] = ["tinyint", "smallint", "mediumint", "int", "bigint"];

/// Tables that must keep capture order whatever their key: another unique key, a foreign key
/// either way, or (then every table) a trigger that is not capgate's outside the system
/// databases (MySQL's `sys` has its own).
fn bound_sql() -> String {
    format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.STATISTICS \
         WHERE NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY' \
         UNION SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE REFERENCED_TABLE_NAME IS NOT NULL \
         UNION SELECT REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME FROM information_schema.KEY_COLUMN_USAGE \
         WHERE REFERENCED_TABLE_NAME IS NOT NULL \
         UNION SELECT '*', '*' FROM information_schema.TRIGGERS \
         WHERE TRIGGER_NAME NOT LIKE 'capgate\\_%' AND TRIGGER_SCHEMA NOT IN ({})",
        super::capture::SYSTEM_SCHEMAS
    )
}

/// Reads which of `tables` (the replica's, as last read) are free.
pub async fn free(conn: &mut mysql_async::Conn, tables: &Tables) -> Result<Free, mysql_async::Error> {
    let bound: Vec<(String, String)> = conn.query(bound_sql()).await?;
    Ok(free_of(tables, &bound))
}

/// [`free`] from the catalog's answer.
fn free_of(tables: &Tables, bound: &[(String, String)]) -> Free {
    if bound.iter().any(|(s, t)| s == "*" && t == "*") {
        return Free::default();
    }
    let bound: BTreeSet<TableName> = bound.iter().map(|(s, t)| TableName::new(s.clone(), t.clone())).collect();
    let integer_key = |columns: &[Column]| {
        let mut keys = columns.iter().filter(|c| c.key).peekable();
        keys.peek().is_some() && keys.all(|c| INTEGERS.contains(&c.data_type.as_str()))
    };
    Free(tables.iter().filter(|(t, columns)| !bound.contains(*t) && integer_key(columns)).map(|(t, _)| t.clone()).collect())
}

/// The key values of an image on a free table, or None (no image, not JSON, a key column
/// missing or not an integer): then the change keeps capture order.
fn key_of(text: Option<&str>, keys: &[&Column]) -> Option<Vec<i128>> {
    let map: serde_json::Map<String, Value> = serde_json::from_str(text?).ok()?;
    keys.iter()
        .map(|k| match map.get(&k.name)? {
            Value::Number(n) => n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)),
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .collect()
}

/// `changes` regrouped: by level, then table, then operation (deletes, updates, inserts),
/// then capture order (see the module documentation). Changes of tables not in `tables`
/// keep capture order (the statements then report the missing table as before).
pub fn regroup(changes: &[Change], tables: &Tables, free: &Free) -> Vec<Change> {
    let mut last: HashMap<(&str, Vec<i128>), usize> = HashMap::new();
    // Per free table: the highest level any of its changes took, and the lowest a keyed one
    // may take (above a change of the table that kept its order).
    let mut top: HashMap<&str, usize> = HashMap::new();
    let mut floor: HashMap<&str, usize> = HashMap::new();
    // The chain of changes that keep capture order: its last level, table and operation.
    let mut chain: Option<(usize, &str, &str)> = None;
    let keys_of: BTreeMap<&TableName, Vec<&Column>> =
        tables.iter().filter(|(t, _)| free.0.contains(*t)).map(|(t, columns)| (t, columns.iter().filter(|c| c.key).collect())).collect();
    let mut placed: Vec<(usize, &str, u8, usize)> = Vec::with_capacity(changes.len());
    for (i, c) in changes.iter().enumerate() {
        let tbl = c.tbl.as_str();
        let keys = TableName::parse(tbl).and_then(|t| keys_of.get(&t));
        let touched: Option<Vec<Vec<i128>>> = keys.and_then(|keys| match c.op.as_str() {
            "I" => Some(vec![key_of(c.new.as_deref(), keys)?]),
            "D" => Some(vec![key_of(c.old.as_deref(), keys)?]),
            "U" => Some(vec![key_of(c.old.as_deref(), keys)?, key_of(c.new.as_deref(), keys)?]),
            _ => None,
        });
        let level = match touched {
            Some(touched) => {
                let mut level = floor.get(tbl).copied().unwrap_or(0);
                for k in &touched {
                    if let Some(l) = last.get(&(tbl, k.clone())) {
                        level = level.max(l + 1);
                    }
                }
                for k in touched {
                    last.insert((tbl, k), level);
                }
                level
            }
            None if keys.is_some() => {
                // A free table's change that names no key (a TRUNCATE): after every earlier
                // change of the table, before every later one.
                let level = top.get(tbl).map_or(0, |t| t + 1).max(floor.get(tbl).copied().unwrap_or(0));
                floor.insert(tbl, level + 1);
                level
            }
            None => {
                // Capture order; a run of inserts or deletes into one table shares a level
                // (it is merged, in order, into one statement).
                let level = match chain {
                    Some((l, t, op)) if t == tbl && op == c.op && matches!(op, "I" | "D") => l,
                    Some((l, ..)) => l + 1,
                    None => 0,
                };
                chain = Some((level, tbl, c.op.as_str()));
                level
            }
        };
        let t = top.entry(tbl).or_insert(level);
        *t = (*t).max(level);
        let rank = match c.op.as_str() {
            "D" => 0,
            "U" => 1,
            "I" => 2,
            _ => 3,
        };
        placed.push((level, tbl, rank, i));
    }
    placed.sort_unstable();
    placed.into_iter().map(|(.., i)| changes[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, data_type: &str, key: bool) -> Column {
        Column { name: name.into(), data_type: data_type.into(), key, generated: false }
    }

    fn tables() -> Tables {
        BTreeMap::from([
            (TableName::new("s", "a"), vec![col("id", "int", true), col("v", "int", false)]),
            (TableName::new("s", "b"), vec![col("id", "int", true), col("v", "int", false)]),
            (TableName::new("s", "t"), vec![col("name", "varchar", true), col("v", "int", false)]),
            (TableName::new("s", "n"), vec![col("id", "int", false), col("v", "int", false)]),
        ])
    }

    fn change(seq: u64, tbl: &str, op: &str, old: Option<&str>, new: Option<&str>) -> Change {
        Change { seq, tbl: tbl.into(), op: op.into(), old: old.map(Into::into), new: new.map(Into::into) }
    }

    fn seqs(changes: &[Change]) -> Vec<u64> {
        changes.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn free_tables_have_an_integer_key_and_nothing_else_binding_their_order() {
        let bound = [("s".to_owned(), "b".to_owned())];
        let free = free_of(&tables(), &bound);
        // `b` has another unique key or a foreign key; `t` is keyed by text; `n` has no key.
        assert_eq!(free, Free(BTreeSet::from([TableName::new("s", "a")])));
        // A trigger that is not capgate's anywhere on the replica: nothing is regrouped.
        assert_eq!(free_of(&tables(), &[("*".to_owned(), "*".to_owned())]), Free::default());
    }

    #[test]
    fn sysbench_transactions_become_runs_and_each_key_keeps_its_order() {
        let free = Free(BTreeSet::from([TableName::new("s", "a"), TableName::new("s", "b")]));
        let row = |id: u64, v: u64| format!(r#"{{"id": {id}, "v": {v}}}"#);
        let mut changes = Vec::new();
        // Two transactions per table, each: update, update, delete and insert of one id.
        for (n, tbl) in [(0, "s.a"), (10, "s.b"), (20, "s.a"), (30, "s.b")] {
            let id = n + 1;
            changes.push(change(n + 1, tbl, "U", Some(&row(id, 1)), Some(&row(id, 2))));
            changes.push(change(n + 2, tbl, "U", Some(&row(id + 1, 1)), Some(&row(id + 1, 2))));
            changes.push(change(n + 3, tbl, "D", Some(&row(id + 2, 1)), None));
            changes.push(change(n + 4, tbl, "I", None, Some(&row(id + 2, 5))));
        }
        // A later transaction updates id 1 again.
        changes.push(change(41, "s.a", "U", Some(&row(1, 2)), Some(&row(1, 3))));
        let got = regroup(&changes, &tables(), &free);
        // Level 0: per table, deletes, updates, then inserts of keys not touched before;
        // level 1: the inserts after their key's delete and the second update of id 1.
        assert_eq!(seqs(&got), [3, 23, 1, 2, 21, 22, 13, 33, 11, 12, 31, 32, 41, 4, 24, 14, 34]);
        // 17 changes, 9 statements: the deletes and the inserts of each table merged.
        let text = super::super::batched::statements(&got, &tables()).expect("sql");
        let rows: Vec<u64> = text.counts.iter().map(|c| c.expect("counted")).collect();
        assert_eq!(rows, [2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 2]);
    }

    #[test]
    fn other_tables_keep_capture_order_and_a_truncate_stays_between_its_neighbours() {
        let free = Free(BTreeSet::from([TableName::new("s", "a")]));
        let changes = [
            change(1, "s.t", "I", None, Some(r#"{"name": "x", "v": 1}"#)),
            change(2, "s.a", "I", None, Some(r#"{"id": 1, "v": 1}"#)),
            change(3, "s.t", "I", None, Some(r#"{"name": "y", "v": 1}"#)),
            change(4, "s.n", "D", Some(r#"{"id": 1, "v": 1}"#), None),
            change(5, "s.t", "D", Some(r#"{"name": "x", "v": 1}"#), None),
            change(6, "s.a", "T", None, None),
            change(7, "s.a", "I", None, Some(r#"{"id": 2, "v": 1}"#)),
            change(8, "s.a", "I", None, Some(r#"{"id": 3}"#)),
            change(9, "s.b", "I", None, Some(r#"{"id": 3}"#)),
        ];
        let got = regroup(&changes, &tables(), &free);
        // s.t, s.n and s.b (not free) in capture order, the run 1, 3 sharing a level; s.a's
        // insert before its TRUNCATE, the inserts after it.
        assert_eq!(seqs(&got), [2, 1, 3, 6, 4, 7, 8, 5, 9]);
        let chain: Vec<u64> = got.iter().filter(|c| c.tbl != "s.a").map(|c| c.seq).collect();
        assert_eq!(chain, [1, 3, 4, 5, 9]);
    }

    #[test]
    fn an_update_of_the_key_orders_after_both_keys() {
        let free = Free(BTreeSet::from([TableName::new("s", "a")]));
        let changes = [
            change(1, "s.a", "D", Some(r#"{"id": 2, "v": 1}"#), None),
            change(2, "s.a", "U", Some(r#"{"id": 1, "v": 1}"#), Some(r#"{"id": 2, "v": 1}"#)),
            change(3, "s.a", "I", None, Some(r#"{"id": 1, "v": 9}"#)),
            change(4, "s.a", "I", None, Some(r#"{"id": 7, "v": 9}"#)),
        ];
        let got = regroup(&changes, &tables(), &free);
        // 2 moves id 1 to id 2: after the delete of id 2; 3 reuses id 1: after 2.
        assert_eq!(seqs(&got), [1, 4, 2, 3]);
    }
}

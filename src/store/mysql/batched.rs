//! An async batch's statement text for the replica, merged for speed (issue 15): a run of
//! inserts into one table becomes one multi-row INSERT, a run of deletes from one table one
//! DELETE, and the number of rows each statement must match travels with the text
//! ([`Text::counts`]): the shipper compares it with the row count in the statement's own OK
//! reply ([`super::ship::apply_counted`]) instead of asking the server to (a `SET` of a
//! session counter per statement, once half of the statements and of the replies).
//!
//! Only the fast path uses this text: when a count is off, or a duplicate key fails it, the
//! shipper rolls the batch back and applies it again change by change with
//! [`super::apply::statements`], which names each conflict's kind, table and key. So what a
//! conflict looks like, and exactly-once, are unchanged; only the happy path is cheaper.

use super::apply::{bad, by_primary_key, image_values, literal, row_matches, target, ApplyError, Change, Tables};
use super::image::quote_ident;

/// Most rows merged into one INSERT or DELETE (keeps each statement and its plan small).
const MAX_RUN: usize = 200;

/// Statements (each ending in `;`) and, per statement in order, the rows it must match (None:
/// any number, e.g. the `SET`s around a TRUNCATE's DELETE).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Text {
    pub sql: String,
    pub counts: Vec<Option<u64>>,
}

impl Text {
    fn push(&mut self, statement: &str, want: Option<usize>) {
        self.sql.push_str(statement);
        self.sql.push(';');
        self.counts.push(want.map(|n| n as u64));
    }
}

/// The statements that apply `changes` in order, with the row count each must match.
pub fn statements(changes: &[Change], tables: &Tables) -> Result<Text, ApplyError> {
    let mut out = Text::default();
    let mut i = 0;
    while i < changes.len() {
        let first = &changes[i];
        let (table, columns) = target(first, tables)?;
        // The run: following changes of the same kind on the same table (updates and truncates never merge).
        let run = changes[i..]
            .iter()
            .take(MAX_RUN)
            .take_while(|c| c.op == first.op && c.tbl == first.tbl && matches!(c.op.as_str(), "I" | "D"))
            .count()
            .max(1);
        match first.op.as_str() {
            "I" => {
                let mut names: Option<Vec<String>> = None;
                let mut rows = Vec::new();
                for change in &changes[i..i + run] {
                    let new = image_values(change, columns, &change.new, "new")?;
                    let these: Vec<String> = new.iter().map(|(c, _)| quote_ident(&c.name)).collect();
                    if names.as_ref().is_some_and(|n| *n != these) {
                        break; // Another column set starts a new INSERT.
                    }
                    names.get_or_insert(these);
                    let values: Vec<String> =
                        new.iter().map(|(c, v)| literal(c, v)).collect::<Result<_, _>>().map_err(|w| bad(change, &w))?;
                    rows.push(format!("({})", values.join(", ")));
                }
                let names = names.unwrap_or_default();
                out.push(&format!("INSERT INTO {table} ({}) VALUES {}", names.join(", "), rows.join(", ")), Some(rows.len()));
                i += rows.len();
            }
            "U" => {
                let old = image_values(first, columns, &first.old, "old")?;
                let new = image_values(first, columns, &first.new, "new")?;
                let sets: Vec<String> = new
                    .iter()
                    .map(|(c, v)| literal(c, v).map(|l| format!("{} = {l}", quote_ident(&c.name))))
                    .collect::<Result<_, _>>()
                    .map_err(|w| bad(first, &w))?;
                let matches = row_matches(&old).map_err(|w| bad(first, &w))?;
                out.push(&format!("UPDATE {table}{} SET {} WHERE {matches}", by_primary_key(columns, &old), sets.join(", ")), Some(1));
                i += 1;
            }
            "D" => {
                let mut each = Vec::with_capacity(run);
                for change in &changes[i..i + run] {
                    let old = image_values(change, columns, &change.old, "old")?;
                    each.push(format!("({})", row_matches(&old).map_err(|w| bad(change, &w))?));
                }
                out.push(&format!("DELETE FROM {table} WHERE {}", each.join(" OR ")), Some(run));
                i += run;
            }
            "T" => {
                // A TRUNCATE (decision 0029): every row goes, whatever the count.
                for statement in super::apply::truncate_statements(&table) {
                    out.push(&statement, None);
                }
                i += 1;
            }
            other => return Err(bad(first, &format!("unknown operation {other:?}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::classify::TableName;
    use crate::store::mysql::image::Column;

    fn tables() -> Tables {
        let col = |name: &str, key: bool| Column { name: name.into(), data_type: "int".into(), key, generated: false };
        BTreeMap::from([
            (TableName::new("s", "a"), vec![col("id", true), col("v", false)]),
            (TableName::new("s", "b"), vec![col("id", true), col("v", false)]),
        ])
    }

    fn change(seq: u64, tbl: &str, op: &str, old: Option<&str>, new: Option<&str>) -> Change {
        Change { seq, tbl: tbl.into(), op: op.into(), old: old.map(Into::into), new: new.map(Into::into) }
    }

    #[test]
    fn runs_of_inserts_and_deletes_merge_in_order() {
        let changes = [
            change(1, "s.a", "I", None, Some(r#"{"id": 1, "v": 10}"#)),
            change(2, "s.a", "I", None, Some(r#"{"id": 2, "v": null}"#)),
            change(3, "s.a", "I", None, Some(r#"{"id": 3}"#)),
            change(4, "s.b", "D", Some(r#"{"id": 4, "v": 1}"#), None),
            change(5, "s.b", "D", Some(r#"{"id": 5, "v": 2}"#), None),
            change(6, "s.b", "U", Some(r#"{"id": 6, "v": 3}"#), Some(r#"{"id": 6, "v": 4}"#)),
            change(7, "s.b", "U", Some(r#"{"id": 6, "v": 4}"#), Some(r#"{"id": 6, "v": 5}"#)),
        ];
        let text = statements(&changes, &tables()).expect("sql");
        let parts: Vec<&str> = text.sql.split(';').filter(|s| !s.is_empty()).collect();
        assert_eq!(
            parts,
            [
                "INSERT INTO `s`.`a` (`id`, `v`) VALUES (1, 10), (2, NULL)",
                "INSERT INTO `s`.`a` (`id`) VALUES (3)",
                "DELETE FROM `s`.`b` WHERE (`id` <=> 4 AND `v` <=> 1) OR (`id` <=> 5 AND `v` <=> 2)",
                "UPDATE `s`.`b` USE INDEX (PRIMARY) SET `id` = 6, `v` = 4 WHERE `id` <=> 6 AND `v` <=> 3",
                "UPDATE `s`.`b` USE INDEX (PRIMARY) SET `id` = 6, `v` = 5 WHERE `id` <=> 6 AND `v` <=> 4",
            ]
        );
        // The rows each statement must match, compared with its OK reply's count.
        assert_eq!(text.counts, [Some(2), Some(1), Some(2), Some(1), Some(1)]);
    }

    #[test]
    fn an_update_names_the_primary_key_only_when_the_replica_table_has_one_the_image_covers() {
        let col = |name: &str, key: bool| Column { name: name.into(), data_type: "int".into(), key, generated: false };
        let tables: Tables = BTreeMap::from([
            // No primary key on the replica: a hint naming one would fail the batch.
            (TableName::new("s", "nokey"), vec![col("id", false), col("v", false)]),
            // Keyed on a column the primary's image lacks: the optimizer picks.
            (TableName::new("s", "other"), vec![col("id", false), col("v", false), col("r", true)]),
        ]);
        let update = |tbl: &str| change(1, tbl, "U", Some(r#"{"id": 1, "v": 1}"#), Some(r#"{"id": 1, "v": 2}"#));
        for tbl in ["s.nokey", "s.other"] {
            let sql = statements(&[update(tbl)], &tables).expect("sql").sql;
            assert!(!sql.contains("USE INDEX") && sql.contains(" SET `id` = 1, `v` = 2 WHERE "), "{sql}");
        }
        let sql = statements(&[update("s.a")], &super::tests::tables()).expect("sql").sql;
        assert!(sql.contains("UPDATE `s`.`a` USE INDEX (PRIMARY) SET "), "{sql}");
        let one = super::super::apply::statements(&[update("s.a")], &super::tests::tables()).expect("sql");
        assert!(one.starts_with("UPDATE `s`.`a` USE INDEX (PRIMARY) SET "), "{one}");
    }

    #[test]
    fn a_truncate_between_inserts_keeps_its_place() {
        let changes = [
            change(1, "s.a", "I", None, Some(r#"{"id": 1, "v": 1}"#)),
            change(2, "s.a", "T", None, None),
            change(3, "s.a", "I", None, Some(r#"{"id": 1, "v": 2}"#)),
        ];
        let text = statements(&changes, &tables()).expect("sql");
        let parts: Vec<&str> = text.sql.split(';').filter(|s| !s.is_empty()).collect();
        assert_eq!(text.counts, [Some(1), None, None, None, Some(1)]);
        assert_eq!(
            &parts[..5],
            [
                "INSERT INTO `s`.`a` (`id`, `v`) VALUES (1, 1)",
                "SET @capgate_fk = @@foreign_key_checks, foreign_key_checks = 0",
                "DELETE FROM `s`.`a`",
                "SET foreign_key_checks = @capgate_fk, @capgate_fk = NULL",
                "INSERT INTO `s`.`a` (`id`, `v`) VALUES (1, 2)",
            ]
        );
    }

    #[test]
    fn unknown_tables_are_reported_as_by_the_change_by_change_text() {
        let c = change(1, "s.gone", "I", None, Some(r#"{"id": 1}"#));
        assert_eq!(statements(&[c], &tables()), Err(ApplyError::MissingTable("s.gone".into())));
    }
}

//! Conflicts of an async change on a MySQL / MariaDB replica (decision 0021): the replica's
//! row as an image (so the conflict is recorded with the old, the new and the replica's
//! row), what kind of conflict it is, and the statements that overwrite the replica's row
//! with the change's new image (`on_conflict = "overwrite"`).

use std::fmt::Write;

use super::apply::{image_values, literal, target, ApplyError, Change, Tables};
use super::image::{json_object, quote_ident};

/// `key = value AND …` over the primary key columns of the image `which` of `change`.
fn key_where(change: &Change, tables: &Tables, which: &str) -> Result<(String, String), ApplyError> {
    let (target, columns) = target(change, tables)?;
    let text = if which == "new" { &change.new } else { &change.old };
    let values = image_values(change, columns, text, which)?;
    let mut parts = Vec::new();
    for (c, v) in values.iter().filter(|(c, _)| c.key) {
        let l = literal(c, v).map_err(|w| super::apply::bad(change, &w))?;
        parts.push(format!("{} <=> {l}", quote_ident(&c.name)));
    }
    if parts.is_empty() {
        return Err(super::apply::bad(change, &format!("the {which} image has no primary key column")));
    }
    Ok((target, parts.join(" AND ")))
}

/// The image `change` is matched by on the replica: the old one for updates and deletes.
fn matched_image(change: &Change) -> &'static str {
    if change.op == "I" {
        "new"
    } else {
        "old"
    }
}

/// The query that reads the replica's row with the change's key, as an image (JSON text,
/// encoded as a capture trigger would).
pub fn replica_row_sql(change: &Change, tables: &Tables) -> Result<String, ApplyError> {
    let (target, columns) = target(change, tables)?;
    let (_, key) = key_where(change, tables, matched_image(change))?;
    let image = json_object("r", columns).map_err(|e| super::apply::bad(change, &e.to_string()))?;
    Ok(format!("SELECT {image} FROM {target} AS r WHERE {key}"))
}

/// The conflict's kind, given whether the replica has a row with the change's key.
pub fn kind(change: &Change, row_exists: bool) -> &'static str {
    match (change.op.as_str(), row_exists) {
        ("I", _) => "insert_exists",
        ("U", true) => "update_differs",
        ("U", false) => "update_missing",
        (_, true) => "delete_differs",
        (_, false) => "delete_missing",
    }
}

/// Statements that make the replica's row what the change left on the primary, whatever the
/// replica's row was: the new image for inserts and updates (the old key's row removed
/// first), no row for deletes.
pub fn overwrite_sql(change: &Change, tables: &Tables) -> Result<String, ApplyError> {
    let mut out = String::new();
    if change.op != "I" {
        let (target, key) = key_where(change, tables, "old")?;
        let _ = write!(out, "DELETE FROM {target} WHERE {key};");
    }
    if change.op != "D" {
        let (target, columns) = target(change, tables)?;
        let new = image_values(change, columns, &change.new, "new")?;
        let names: Vec<String> = new.iter().map(|(c, _)| quote_ident(&c.name)).collect();
        let values: Vec<String> =
            new.iter().map(|(c, v)| literal(c, v)).collect::<Result<_, _>>().map_err(|w| super::apply::bad(change, &w))?;
        let _ = write!(out, "REPLACE INTO {target} ({}) VALUES ({});", names.join(", "), values.join(", "));
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
        BTreeMap::from([(TableName::new("shop", "t"), vec![col("id", true), col("n", false)])])
    }

    fn change(op: &str, old: Option<&str>, new: Option<&str>) -> Change {
        Change { seq: 3, tbl: "shop.t".into(), op: op.into(), old: old.map(Into::into), new: new.map(Into::into) }
    }

    #[test]
    fn overwrites_put_the_new_image_in_place_of_whatever_the_replica_has() {
        let u = change("U", Some(r#"{"id": 1, "n": 5}"#), Some(r#"{"id": 2, "n": 6}"#));
        assert_eq!(
            overwrite_sql(&u, &tables()),
            Ok("DELETE FROM `shop`.`t` WHERE `id` <=> 1;REPLACE INTO `shop`.`t` (`id`, `n`) VALUES (2, 6);".into())
        );
        let d = change("D", Some(r#"{"id": 1, "n": 5}"#), None);
        assert_eq!(overwrite_sql(&d, &tables()), Ok("DELETE FROM `shop`.`t` WHERE `id` <=> 1;".into()));
        assert_eq!(
            replica_row_sql(&d, &tables()),
            Ok("SELECT JSON_OBJECT('id', r.`id`, 'n', r.`n`) FROM `shop`.`t` AS r WHERE `id` <=> 1".into())
        );
        assert_eq!(
            (kind(&d, false), kind(&u, true), kind(&change("I", None, None), true)),
            ("delete_missing", "update_differs", "insert_exists")
        );
    }
}

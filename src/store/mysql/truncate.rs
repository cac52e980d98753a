//! A TRUNCATE of a replicated table carried to the replicas in capture order, on a MySQL /
//! MariaDB primary (decision 0029): the SQL.
//!
//! TRUNCATE fires no trigger and commits implicitly, so it cannot share a transaction with
//! the record of it. capgate runs instead, on the client's own connection, one transaction:
//!
//! 1. `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ` (that transaction only: a locking
//!    read then locks the gaps too), `START TRANSACTION`, and the session markers: the
//!    table's [`super::capture::truncate_mark`] in `@capgate_truncate`, foreign keys and safe
//!    updates off (saved);
//! 2. `SELECT COUNT(*) … FOR UPDATE`: every row and every gap of the table locked, so no
//!    other transaction changes it until the commit;
//! 3. `DELETE FROM` the table: its capture trigger (capgate's account is its definer, so the
//!    client needs no right on `capgate`) records one change `T` at the first row — its
//!    `seq` is taken after every change of the table that committed before, and before
//!    every one that commits after;
//! 4. `SELECT @capgate_truncated` (the trigger wrote the record, unless no row was there),
//!    the markers restored;
//! 5. COMMIT (for a sync table, capgate's coordinated commit), then, for a table with an
//!    AUTO_INCREMENT column, `ALTER TABLE … AUTO_INCREMENT = 1` (InnoDB makes it the largest
//!    value in use plus one), as TRUNCATE resets the counter.
//!
//! Before, on capgate's own connection (the client may not see the catalog): the table's own
//! DELETE triggers (a DELETE would fire them, TRUNCATE does not: refused), other tables'
//! foreign keys to it (TRUNCATE refuses those while `foreign_key_checks` is on: so does
//! capgate, with the server's error), and whether it has an AUTO_INCREMENT column.

use mysql_async::prelude::Queryable;

use super::capture::truncate_mark;
use super::image::quote_ident;
use crate::classify::TableName;

/// ER_TRUNCATE_ILLEGAL_FK: the server's error for a TRUNCATE of a table another table's
/// foreign key references, while `foreign_key_checks` is on.
pub const TRUNCATE_ILLEGAL_FK: (u16, &str) = (1701, "42000");

/// What the primary's catalog says about a table about to be truncated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Its DELETE triggers that are not capgate's.
    pub delete_triggers: Vec<String>,
    /// A foreign key of another table that references it: `` `db`.`child`, CONSTRAINT `name` ``.
    pub referenced_by: Option<String>,
    /// It has an AUTO_INCREMENT column (TRUNCATE resets its counter).
    pub auto_increment: bool,
}

/// Reads [`Catalog`] for `table` (on capgate's own connection to the primary).
pub async fn catalog(conn: &mut mysql_async::Conn, table: &TableName) -> Result<Catalog, mysql_async::Error> {
    let (db, name) = (table.schema.as_str(), table.name.as_str());
    let delete_triggers: Vec<String> = conn
        .exec(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ? \
             AND EVENT_MANIPULATION = 'DELETE' AND TRIGGER_NAME NOT LIKE 'capgate\\_%' ORDER BY TRIGGER_NAME",
            (db, name),
        )
        .await?;
    let referenced_by: Option<(String, String, String)> = conn
        .exec_first(
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ? AND NOT (CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?) \
             ORDER BY CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME LIMIT 1",
            (db, name, db, name),
        )
        .await?;
    let auto_increment: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             AND EXTRA LIKE '%auto_increment%'",
            (db, name),
        )
        .await?;
    Ok(Catalog {
        delete_triggers,
        referenced_by: referenced_by.map(|(s, t, c)| format!("{}.{}, CONSTRAINT {}", quote_ident(&s), quote_ident(&t), quote_ident(&c))),
        auto_increment: auto_increment.unwrap_or(0) > 0,
    })
}

/// `db`.`table`, quoted.
fn target(table: &TableName) -> String {
    format!("{}.{}", quote_ident(&table.schema), quote_ident(&table.name))
}

/// Step 1: the transaction and the markers (sent together; none of them can fail but for a
/// broken session).
pub fn begin(table: &TableName) -> [String; 3] {
    [
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ".into(),
        "START TRANSACTION".into(),
        format!(
            "SET @capgate_truncate = {}, @capgate_truncated = NULL, @capgate_fk = @@foreign_key_checks, foreign_key_checks = 0, \
             @capgate_safe = @@sql_safe_updates, sql_safe_updates = 0",
            truncate_mark(table)
        ),
    ]
}

/// Step 2: every row and gap of the table locked until the commit.
pub fn lock(table: &TableName) -> String {
    format!("SELECT COUNT(*) FROM {} FOR UPDATE", target(table))
}

/// Step 3: the rows deleted; the capture trigger records the TRUNCATE.
pub fn delete(table: &TableName) -> String {
    format!("DELETE FROM {}", target(table))
}

/// Step 4: whether the capture trigger recorded it …
pub const RECORDED: &str = "SELECT @capgate_truncated";

/// … and the session as it was (also after any failure from step 1 on, when the saved
/// values may not be there).
pub const RESTORE: &str = "SET @capgate_truncate = NULL, @capgate_truncated = NULL, \
     foreign_key_checks = COALESCE(@capgate_fk, @@foreign_key_checks), sql_safe_updates = COALESCE(@capgate_safe, @@sql_safe_updates), \
     @capgate_fk = NULL, @capgate_safe = NULL";

/// Step 5, after the commit, for a table with an AUTO_INCREMENT column.
pub fn reset_auto_increment(table: &TableName) -> String {
    format!("ALTER TABLE {} AUTO_INCREMENT = 1", target(table))
}

/// The server's message for a TRUNCATE of a table another table's foreign key references.
pub fn illegal_fk_message(referenced_by: &str) -> String {
    format!("Cannot truncate a table referenced in a foreign key constraint ({referenced_by})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statements_name_the_table_quoted_and_its_mark() {
        let t = TableName::new("shop", "or`ders");
        let [isolation, start, markers] = begin(&t);
        assert_eq!((isolation.as_str(), start.as_str()), ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "START TRANSACTION"));
        assert!(markers.starts_with(&format!("SET @capgate_truncate = {}, ", truncate_mark(&t))), "{markers}");
        assert_eq!(lock(&t), "SELECT COUNT(*) FROM `shop`.`or``ders` FOR UPDATE");
        assert_eq!(delete(&t), "DELETE FROM `shop`.`or``ders`");
        assert_eq!(reset_auto_increment(&t), "ALTER TABLE `shop`.`or``ders` AUTO_INCREMENT = 1");
        assert_ne!(truncate_mark(&t), truncate_mark(&TableName::new("shop", "orders")));
        assert!(truncate_mark(&t) < 1 << 63, "fits a signed BIGINT user variable");
    }
}

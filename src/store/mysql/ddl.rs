//! DDL on a replicated table carried to MySQL / MariaDB replicas (decision 0040): the SQL.
//!
//! DDL fires no trigger and commits implicitly, so it cannot share a transaction with a
//! record of it, and a replica cannot run it inside the batch transaction that moves its
//! position. So:
//!
//! - **On the primary** the client's statement runs on its own connection; then capgate, on
//!   a connection of its own, takes `LOCK TABLES t WRITE` (and the change log, which a plain
//!   INSERT would take anyway), writes one change `S` into `capgate.changes` carrying the
//!   statement, the database it ran in and the table's [`shape`] before and after, and
//!   replaces the table's capture triggers for its new columns before `UNLOCK TABLES`. The
//!   lock waits for every transaction that wrote the table (with the old triggers) to end,
//!   and no write of it runs until the new triggers are in place: every change captured in
//!   the old shape has a smaller `seq` than `S`, every change in the new shape a larger one.
//!   A per-table `GET_LOCK` serializes capgate's carried DDL of one table, so two of them
//!   are recorded in the order they ran.
//! - **On a replica** `S` is applied alone, between two batches: the replica's shape is
//!   recorded in `capgate.ddl_steps` (committed), the statement runs, then the position
//!   moves past `S` with the step's record deleted, in one transaction. A replayed `S`
//!   (capgate killed or the link cut between the statement and the position's move) is
//!   recognised as done when the step's record says `done` (it ran), or the replica's shape
//!   is no longer the one recorded before it ran, or is already the primary's shape after
//!   it. One step of a table runs at a time on a replica (a named lock there); a statement
//!   the replica refuses leaves no record (`super::ddl_catchup` brings missed ones, in order).

use mysql_async::prelude::Queryable;
use serde_json::Value;

use super::ddl_catchup::Settled;
use super::image::{quote_ident, quote_literal};
use crate::classify::TableName;

/// The operation letter of a carried DDL statement in `capgate.changes`.
pub const OP: &str = "S";

/// The replica's record of a DDL step: its shape before the statement ran, or [`DONE`].
pub const STEPS_TABLE: &str = "CREATE TABLE IF NOT EXISTS capgate.ddl_steps (
        origin VARCHAR(128) NOT NULL,
        seq BIGINT UNSIGNED NOT NULL,
        shape VARCHAR(64) NOT NULL,
        PRIMARY KEY (origin, seq)
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin";

/// A DDL statement carried to the replicas (the new image of change `S`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// The statement as the client sent it.
    pub ddl: String,
    /// The session's current database when it ran (unqualified names resolve there).
    pub db: Option<String>,
    /// The session's settings that give the statement its meaning ([`SETTINGS_SQL`]), set
    /// on the replica around it (None: recorded before they were carried).
    pub settings: Option<Settings>,
    /// The table's [`shape`] on the primary before and after it ran.
    pub before: String,
    pub after: String,
}

/// The client session's time zone and `sql_mode` when its statement ran: a TIMESTAMP
/// literal (a default every existing row takes) is read in the time zone, and the mode
/// decides how the text parses (`ANSI_QUOTES`, `PIPES_AS_CONCAT` in a generated column or a
/// CHECK) and what it accepts. The replica's apply session has its own (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// A named zone or an offset (`SYSTEM` is read as the primary's offset at the time).
    pub time_zone: String,
    pub sql_mode: String,
    /// The zone's offset at the time: what the replica uses when it has not loaded the named
    /// zone (None: recorded before it was carried).
    pub offset: Option<String>,
}

/// Read on the client's connection right before its statement: [`Settings`], one row.
pub const SETTINGS_SQL: &str = "SELECT IF(@@session.time_zone = 'SYSTEM', \
     CONCAT(IF(NOW() >= UTC_TIMESTAMP(), '+', ''), TIME_FORMAT(TIMEDIFF(NOW(), UTC_TIMESTAMP()), '%H:%i')), @@session.time_zone), \
     @@session.sql_mode, CONCAT(IF(NOW() >= UTC_TIMESTAMP(), '+', ''), TIME_FORMAT(TIMEDIFF(NOW(), UTC_TIMESTAMP()), '%H:%i'))";

impl Carried {
    pub fn to_json(&self) -> String {
        let mut v = serde_json::json!({"ddl": self.ddl, "db": self.db, "before": self.before, "after": self.after});
        if let Some(s) = &self.settings {
            v["time_zone"] = s.time_zone.clone().into();
            v["sql_mode"] = s.sql_mode.clone().into();
            if let Some(o) = &s.offset {
                v["time_zone_offset"] = o.clone().into();
            }
        }
        v.to_string()
    }

    pub fn from_json(text: &str) -> Result<Carried, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("a carried DDL is not a JSON object: {e}"))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Carried {
            ddl: s("ddl").ok_or("a carried DDL has no statement")?,
            db: s("db"),
            settings: s("time_zone").zip(s("sql_mode")).map(|(time_zone, sql_mode)| Settings {
                time_zone,
                sql_mode,
                offset: s("time_zone_offset"),
            }),
            before: s("before").unwrap_or_default(),
            after: s("after").unwrap_or_default(),
        })
    }

    /// Whether the statement changed the table's shape on the primary (only then can a
    /// replica's shape tell that it ran).
    pub fn changes_shape(&self) -> bool {
        self.before != self.after
    }
}

/// `db`.`table`, quoted.
fn target(table: &TableName) -> String {
    format!("{}.{}", quote_ident(&table.schema), quote_ident(&table.name))
}

/// The table's shape: a SHA-256 of its columns (name, type, nullability, default, extra,
/// generation, character set, collation, in order), its indexes (name, uniqueness,
/// columns and prefixes in order) and its foreign keys and CHECK constraints (name, kind);
/// `-` when the table does not exist. What a carried ADD / DROP / MODIFY / CHANGE COLUMN,
/// ADD / DROP INDEX and ADD / DROP CONSTRAINT or FOREIGN KEY changes (a statement that
/// changes no shape runs again when replayed: adding a constraint twice fails); not
/// comments, table options or the AUTO_INCREMENT counter. A table without foreign keys or
/// CHECK constraints keeps the shape it had before they counted.
pub async fn shape(conn: &mut mysql_async::Conn, table: &TableName) -> Result<String, mysql_async::Error> {
    let got: Option<Option<String>> = conn
        .exec_first(
            "SELECT IF(c.cols IS NULL, '-', SHA2(CONCAT(c.cols, '|', COALESCE(i.idx, ''), COALESCE(CONCAT('|', k.cons), '')), 256)) FROM \
             (SELECT GROUP_CONCAT(CONCAT_WS(',', COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COALESCE(COLUMN_DEFAULT, '~'), EXTRA, \
               COALESCE(GENERATION_EXPRESSION, ''), COALESCE(CHARACTER_SET_NAME, ''), COALESCE(COLLATION_NAME, '')) \
               ORDER BY ORDINAL_POSITION SEPARATOR ';') AS cols \
              FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?) c, \
             (SELECT GROUP_CONCAT(CONCAT_WS(',', INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, COALESCE(SUB_PART, '')) \
               ORDER BY INDEX_NAME, SEQ_IN_INDEX SEPARATOR ';') AS idx \
              FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?) i, \
             (SELECT GROUP_CONCAT(CONCAT_WS(',', CONSTRAINT_NAME, CONSTRAINT_TYPE) ORDER BY CONSTRAINT_NAME, CONSTRAINT_TYPE \
               SEPARATOR ';') AS cons \
              FROM information_schema.TABLE_CONSTRAINTS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
               AND CONSTRAINT_TYPE IN ('FOREIGN KEY', 'CHECK')) k",
            (&table.schema, &table.name, &table.schema, &table.name, &table.schema, &table.name),
        )
        .await?;
    Ok(got.flatten().unwrap_or_else(|| "-".into()))
}

/// The named lock that serializes capgate's carried DDL of `table` on the primary (at most
/// 64 characters: a hash of the name).
pub fn serial_lock(table: &TableName) -> String {
    format!("capgate ddl {:016x}", super::capture::truncate_mark(table))
}

/// `SELECT GET_LOCK(…)` for [`serial_lock`], waiting at most `seconds`.
pub fn take_serial_lock(table: &TableName, seconds: u32) -> String {
    format!("SELECT GET_LOCK({}, {seconds})", quote_literal(&serial_lock(table)))
}

pub fn release_serial_lock(table: &TableName) -> String {
    format!("DO RELEASE_LOCK({})", quote_literal(&serial_lock(table)))
}

/// The table and the change log locked while `S` is written and the triggers replaced: no
/// other session writes the table meanwhile. On MariaDB the change log is taken `WRITE
/// CONCURRENT` (what a plain INSERT takes: other tables' writers do not wait); MySQL has no
/// such lock, and its writers wait the few milliseconds it is held.
pub fn lock_sql(table: &TableName, mariadb: bool) -> String {
    let changes = if mariadb { "capgate.changes WRITE CONCURRENT" } else { "capgate.changes WRITE" };
    format!("LOCK TABLES {} WRITE, {changes}", target(table))
}

/// The statement that records `carried` for `table` as change `S`.
pub fn record_sql(table: &TableName, carried: &Carried) -> String {
    format!(
        "INSERT INTO capgate.changes (conn, at, tbl, op, old_image, new_image, proxied) \
         VALUES (CONNECTION_ID(), UTC_TIMESTAMP(6), {}, '{OP}', NULL, {}, TRUE)",
        quote_literal(&table.to_string()),
        quote_literal(&carried.to_json())
    )
}

/// The step record of a statement that ran on the replica, or was found run there: a later
/// statement of the table may run after it. A record holding a shape is a step begun whose
/// end is not known (the statement may have run or not: the shape tells, [`already_done`]).
pub const DONE: &str = "done";

/// The replica's named lock that lets one step of `table` run at a time there (at most 64
/// characters: a hash of the name).
fn step_lock(table: &TableName) -> String {
    format!("capgate step {:016x}", super::capture::truncate_mark(table))
}

/// Replica: records the shape before `seq` runs (committed before the statement runs).
pub async fn begin_step(conn: &mut mysql_async::Conn, origin: &str, seq: u64, shape: &str) -> Result<(), mysql_async::Error> {
    conn.exec_drop(
        "INSERT INTO capgate.ddl_steps (origin, seq, shape) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE shape = VALUES(shape)",
        (origin, seq, shape),
    )
    .await
}

/// Replica: the statement that forgets the step (in the transaction that moves the position).
pub fn end_step_sql(origin: &str, seq: u64) -> String {
    format!("DELETE FROM capgate.ddl_steps WHERE origin = {} AND seq = {seq};", quote_literal(origin))
}

/// Replica: whether `carried` (change `seq`) already ran there, by the replica table's shape
/// `now` and the shape recorded when its step began (`begun`).
pub fn already_done(carried: &Carried, now: &str, begun: Option<&str>) -> bool {
    (carried.changes_shape() && now == carried.after) || begun.is_some_and(|b| b != now)
}

/// ER_BAD_DB_ERROR: `USE` of a database the server does not have.
const BAD_DB: u16 = 1049;

/// ER_UNKNOWN_TIME_ZONE: a named zone the server's time zone tables do not hold.
const UNKNOWN_TIME_ZONE: u16 = 1298;

/// How a step ended on a replica ([`run_step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// It had run there already (a replay, a step that ran before, or an operator ran it
    /// first): not run again.
    AlreadyDone,
    /// It ran now.
    Ran,
    /// The replica refused the statement (its error); nothing changed there, and no record
    /// of the step is left.
    Failed(String),
    /// Another step of the table held the replica's step lock past the wait: nothing done.
    Busy(String),
}

/// Replica: runs `carried` (change `seq` of `origin`, on `table`) unless it ran there
/// already, one step of the table at a time (a named lock on the replica, waited for at most
/// `wait_secs`: the sync step, the shipper and the catch-up of missed steps each find the one
/// before them finished). The step is recorded first (the shape before it), and marked
/// [`DONE`] once it ran; a statement the replica refuses leaves no record. The record stays
/// until the shipper moves the position past `seq` ([`end_step_sql`]). Only a broken
/// connection is an error.
pub async fn run_step(
    conn: &mut mysql_async::Conn,
    origin: &str,
    seq: u64,
    table: &TableName,
    carried: &Carried,
    wait_secs: u32,
) -> Result<Step, mysql_async::Error> {
    let lock = quote_literal(&step_lock(table));
    let got: Option<Option<i64>> = conn.query_first(format!("SELECT GET_LOCK({lock}, {wait_secs})")).await?;
    if got.flatten() != Some(1) {
        return Ok(Step::Busy(format!("another step of {table} held the replica's step lock for more than {wait_secs} s")));
    }
    let step = locked_step(conn, origin, seq, table, carried).await?;
    conn.query_drop(format!("DO RELEASE_LOCK({lock})")).await?;
    Ok(step)
}

/// [`run_step`] under the replica's step lock.
async fn locked_step(
    conn: &mut mysql_async::Conn,
    origin: &str,
    seq: u64,
    table: &TableName,
    carried: &Carried,
) -> Result<Step, mysql_async::Error> {
    conn.query_drop(STEPS_TABLE).await?;
    let settled = Settled::read(conn, origin).await?;
    if settled.has(seq, &table.to_string()) {
        return Ok(Step::AlreadyDone);
    }
    let now = shape(conn, table).await?;
    let begun = settled.begun.get(&seq).map(String::as_str);
    if already_done(carried, &now, begun) {
        mark_done(conn, origin, seq).await?;
        return Ok(Step::AlreadyDone);
    }
    begin_step(conn, origin, seq, &now).await?;
    let step = run_statement(conn, carried).await?;
    match step {
        Step::Ran => mark_done(conn, origin, seq).await?,
        // Refused: nothing ran, and a record left would read as "begun" (a later shape
        // change would make it look done).
        _ => conn.query_drop(end_step_sql(origin, seq)).await?,
    }
    Ok(step)
}

/// Replica: marks step `seq` of `origin` [`DONE`].
async fn mark_done(conn: &mut mysql_async::Conn, origin: &str, seq: u64) -> Result<(), mysql_async::Error> {
    begin_step(conn, origin, seq, DONE).await
}

/// The statement of `carried`, in its database and with its session's settings (the apply
/// session's own put back after).
async fn run_statement(conn: &mut mysql_async::Conn, carried: &Carried) -> Result<Step, mysql_async::Error> {
    // The apply session's own settings are put back whatever the statement did.
    let settings = carried.settings.as_ref().map(settings_sql);
    if let Some((set, _)) = &settings {
        let mut set = conn.query_drop(set).await;
        // A named zone the replica has not loaded (its time zone tables are its own): the
        // zone's offset when the statement ran on the primary.
        if let (Err(mysql_async::Error::Server(e)), Some(s)) = (&set, &carried.settings) {
            if let (UNKNOWN_TIME_ZONE, Some(offset)) = (e.code, &s.offset) {
                tracing::info!(zone = %s.time_zone, %offset, "a carried DDL statement's time zone is not loaded on the replica; run at its offset");
                set = conn.query_drop(settings_sql(&Settings { time_zone: offset.clone(), ..s.clone() }).0).await;
            }
        }
        if let Err(e) = set {
            return match e {
                mysql_async::Error::Server(_) => Ok(Step::Failed(format!("setting the session's time zone and sql_mode: {e}"))),
                e => Err(e),
            };
        }
    }
    let mut step = Ok(Step::Ran);
    for sql in run_sql(carried) {
        match conn.query_drop(&sql).await {
            Ok(()) => {}
            // The session's database is the primary's own (a DBA's scratch database, the
            // table named in full): the statement runs in `information_schema`, where a name
            // it leaves unqualified fails rather than resolve in an earlier statement's
            // database.
            Err(mysql_async::Error::Server(e)) if e.code == BAD_DB && sql.starts_with("USE ") => {
                tracing::info!(database = ?carried.db, "a carried DDL statement's database is not on the replica; run without it");
                conn.query_drop("USE information_schema").await?;
            }
            Err(e @ mysql_async::Error::Server(_)) => {
                step = Ok(Step::Failed(e.to_string()));
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if let Some((_, restore)) = &settings {
        conn.query_drop(restore).await?;
    }
    step
}

/// The statements that set `s` on a replica's session, and that put its own back.
fn settings_sql(s: &Settings) -> (String, String) {
    (
        format!(
            "SET @capgate_ddl_tz = @@session.time_zone, @capgate_ddl_mode = @@session.sql_mode, SESSION time_zone = {}, \
             SESSION sql_mode = {}",
            quote_literal(&s.time_zone),
            quote_literal(&s.sql_mode)
        ),
        "SET SESSION time_zone = @capgate_ddl_tz, SESSION sql_mode = @capgate_ddl_mode".to_owned(),
    )
}

/// Replica: the statements that run `carried` in its database.
pub fn run_sql(carried: &Carried) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(db) = carried.db.as_deref().filter(|d| !d.is_empty()) {
        out.push(format!("USE {}", quote_ident(db)));
    }
    out.push(carried.ddl.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried(before: &str, after: &str) -> Carried {
        Carried {
            ddl: "ALTER TABLE t ADD c INT".into(),
            db: Some("shop".into()),
            settings: Some(Settings { time_zone: "Asia/Karachi".into(), sql_mode: "ANSI_QUOTES".into(), offset: Some("+05:00".into()) }),
            before: before.into(),
            after: after.into(),
        }
    }

    #[test]
    fn a_carried_statement_travels_as_json() {
        let c = carried("a", "b");
        assert_eq!(Carried::from_json(&c.to_json()), Ok(c.clone()));
        let no_offset = Carried { settings: c.settings.clone().map(|s| Settings { offset: None, ..s }), ..c };
        assert_eq!(Carried::from_json(&no_offset.to_json()), Ok(no_offset));
        let no_db = Carried { db: None, settings: None, ..carried("a", "a") };
        assert_eq!(Carried::from_json(&no_db.to_json()), Ok(no_db.clone()));
        assert_eq!(run_sql(&no_db), ["ALTER TABLE t ADD c INT"]);
        assert_eq!(run_sql(&carried("a", "b")), ["USE `shop`", "ALTER TABLE t ADD c INT"]);
    }

    #[test]
    fn a_replayed_statement_is_recognised_by_the_replicas_shape() {
        let c = carried("old", "new");
        // Never begun: runs unless the replica already has the primary's new shape.
        assert!(!already_done(&c, "old", None));
        assert!(already_done(&c, "new", None), "run by hand before: not again");
        assert!(!already_done(&c, "replica's own", None));
        // Begun: done once the replica's shape moved from the one recorded.
        assert!(already_done(&c, "replica's own + c", Some("replica's own")));
        assert!(!already_done(&c, "replica's own", Some("replica's own")));
        // A statement that changes no shape (a comment) runs again: it is idempotent.
        assert!(!already_done(&carried("same", "same"), "same", Some("same")));
    }

    #[test]
    fn the_statements_name_the_table_quoted() {
        let t = TableName::new("shop", "or`ders");
        assert_eq!(lock_sql(&t, true), "LOCK TABLES `shop`.`or``ders` WRITE, capgate.changes WRITE CONCURRENT");
        assert_eq!(lock_sql(&t, false), "LOCK TABLES `shop`.`or``ders` WRITE, capgate.changes WRITE");
        assert!(record_sql(&t, &carried("a", "b")).contains("'shop.\"or`ders\"', 'S', NULL, '{"), "{}", record_sql(&t, &carried("a", "b")));
        assert!(serial_lock(&t).len() <= 64);
        assert_ne!(serial_lock(&t), serial_lock(&TableName::new("shop", "orders")));
    }
}

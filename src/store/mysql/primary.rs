//! The `capgate` database on a MySQL / MariaDB primary (decision 0015): where capture
//! triggers record row images, and where a sync commit writes its decision record.
//!
//! - `capgate.changes`: changes shipped later (async and bounded tables, and every replicated
//!   table written around capgate), in capture order;
//! - `capgate.sync_changes`: a capgate session's changes to sync tables, read and deleted at
//!   its COMMIT by the coordinator, never shipped later;
//! - `capgate.decisions`: one row per coordinated commit, written inside the primary
//!   transaction: the truth recovery reads (XA's `XAER_NOTA` cannot tell "committed" from
//!   "never existed").
//!
//! Session markers, set by capgate on its own connections: `@capgate_session` on a client
//! session's primary connection (its sync changes are coordinated at COMMIT), and
//! `@capgate_apply` on a replica apply session (nothing it writes is captured again).

use mysql_async::prelude::Queryable;

pub use super::grants::Grants;

/// The marker capgate sets on a client session's primary connection.
pub const SESSION_MARKER: &str = "SET @capgate_session = 1";

/// The marker capgate sets on its replica apply sessions, with the settings images are
/// applied under (decision 0015): utf8mb4, the images' character set; UTC, so `FROM_UNIXTIME`
/// names the captured instant.
pub const APPLY_MARKER: &str = "SET NAMES utf8mb4, @capgate_apply = 1, time_zone = '+00:00'";

/// The schema, created if missing (idempotent; run at start).
const SCHEMA: &[&str] = &[
    "CREATE DATABASE IF NOT EXISTS capgate",
    "CREATE TABLE IF NOT EXISTS capgate.changes (
        seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        conn BIGINT UNSIGNED NOT NULL,
        at DATETIME(6) NOT NULL,
        tbl VARCHAR(400) NOT NULL,
        op CHAR(1) NOT NULL,
        old_image LONGTEXT NULL,
        new_image LONGTEXT NULL,
        proxied BOOLEAN NOT NULL
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS capgate.sync_changes (
        seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        conn BIGINT UNSIGNED NOT NULL,
        at DATETIME(6) NOT NULL,
        tbl VARCHAR(400) NOT NULL,
        op CHAR(1) NOT NULL,
        old_image LONGTEXT NULL,
        new_image LONGTEXT NULL,
        KEY by_conn (conn, seq)
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS capgate.decisions (
        gid VARCHAR(128) NOT NULL PRIMARY KEY,
        origin VARCHAR(128) NOT NULL,
        committed BOOLEAN NOT NULL,
        at DATETIME(6) NOT NULL
     ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
];

/// The routines every capture trigger calls with the row images it built (decision 0031):
/// `capgate.capture` for async and bounded tables, `capgate.capture_sync` for sync tables (see
/// `super::capture` for what each records). Why routines: under `LOCK TABLES t WRITE`,
/// MariaDB 10.11 locks the tables `t`'s triggers write along with `t`, but where its three
/// triggers each name `capgate.changes` a write to `t` failed with error 1442 ("Can't update
/// table 'changes' in stored function/trigger because it is already used by statement which
/// invoked this stored function/trigger"); a routine's tables are locked once however many
/// triggers call it, and the write goes through — through capgate or around it (a
/// `mariadb-dump` restore wraps each table's INSERTs in `LOCK TABLES … WRITE`).
pub const ROUTINES: [(&str, &str); 2] = [("capture", CAPTURE), ("capture_sync", CAPTURE_SYNC)];

/// The parameters of both routines: table, operation (`I`, `U`, `D`), old and new image.
const PARAMETERS: &str = "IN p_tbl VARCHAR(400) CHARACTER SET utf8mb4, IN p_op CHAR(1) CHARACTER SET utf8mb4, \
    IN p_old LONGTEXT CHARACTER SET utf8mb4, IN p_new LONGTEXT CHARACTER SET utf8mb4";

/// `capgate.capture`'s body: a row in `capgate.changes`, shipped later.
const CAPTURE: &str = "INSERT INTO capgate.changes (conn, at, tbl, op, old_image, new_image, proxied) \
    VALUES (CONNECTION_ID(), UTC_TIMESTAMP(6), p_tbl, p_op, p_old, p_new, @capgate_session IS NOT NULL)";

/// `capgate.capture_sync`'s body: written around capgate, a row in `capgate.changes`;
/// written by a capgate client session, a row in `capgate.sync_changes` for the coordinator
/// and `@capgate_sync = 1` — or, outside a transaction (an autocommit statement capgate did
/// not wrap), error 1644 instead, since that change would commit on the primary alone (SIGNAL
/// takes at most 128 characters).
const CAPTURE_SYNC: &str = "BEGIN DECLARE message VARCHAR(128) CHARACTER SET utf8mb4; \
    IF @capgate_session IS NULL THEN \
    INSERT INTO capgate.changes (conn, at, tbl, op, old_image, new_image, proxied) \
    VALUES (CONNECTION_ID(), UTC_TIMESTAMP(6), p_tbl, p_op, p_old, p_new, FALSE); \
    ELSE IF @@in_transaction = 0 THEN \
    SET message = LEFT(CONCAT('capgate: sync table ', p_tbl, ' written outside a transaction capgate coordinates; use BEGIN ... COMMIT'), 128); \
    SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1644, MESSAGE_TEXT = message; END IF; \
    INSERT INTO capgate.sync_changes (conn, at, tbl, op, old_image, new_image) \
    VALUES (CONNECTION_ID(), UTC_TIMESTAMP(6), p_tbl, p_op, p_old, p_new); \
    SET @capgate_sync = 1; END IF; END";

/// Why the primary cannot capture.
#[derive(Debug, thiserror::Error)]
pub enum PrimaryError {
    #[error(
        "the primary's account lacks {privilege}: {why}; grant it (e.g. `GRANT {privilege} ON {on} TO {account}`) and restart capgate"
    )]
    Privilege { privilege: &'static str, on: String, account: String, why: &'static str },
    #[error(
        "the primary has binary logging on (log_bin = ON) and capgate's account {account} has no SUPER privilege, so MariaDB \
         refuses to let it create triggers: grant SUPER, or set log_bin_trust_function_creators = ON on the primary"
    )]
    BinlogTriggers { account: String },
    #[error("creating the capgate database on the primary: {0}")]
    Schema(mysql_async::Error),
    #[error("reading the primary's privileges: {0}")]
    Catalog(mysql_async::Error),
}

/// Create the `capgate` database and its tables if missing, and the capture routines
/// ([`ROUTINES`]) if missing or different (an older capgate's): replaced only then, as a
/// replacement waits for every statement running them.
pub async fn install(conn: &mut mysql_async::Conn) -> Result<(), PrimaryError> {
    for sql in SCHEMA {
        conn.query_drop(*sql).await.map_err(PrimaryError::Schema)?;
    }
    let have: Vec<(String, Option<String>)> = conn
        .query("SELECT ROUTINE_NAME, ROUTINE_DEFINITION FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'capgate' AND ROUTINE_TYPE = 'PROCEDURE'")
        .await
        .map_err(PrimaryError::Schema)?;
    for (name, body) in ROUTINES {
        if have.iter().any(|(n, b)| n == name && b.as_deref() == Some(body)) {
            continue;
        }
        conn.query_drop(routine_sql(name, body)).await.map_err(PrimaryError::Schema)?;
    }
    Ok(())
}

/// The statement that creates (or replaces) capture routine `name` with `body`.
fn routine_sql(name: &str, body: &str) -> String {
    format!("CREATE OR REPLACE DEFINER = CURRENT_USER PROCEDURE capgate.{name}({PARAMETERS}) MODIFIES SQL DATA SQL SECURITY DEFINER {body}")
}

/// Check that capgate's account may install capture on `schemas` (the databases holding
/// replicated tables): TRIGGER on each, everything on `capgate` (its tables and routines), and the right to create
/// triggers while the binary log is on. The first missing privilege is named.
pub async fn check_privileges(conn: &mut mysql_async::Conn, schemas: &[String]) -> Result<(), PrimaryError> {
    let grants = Grants::read(conn).await.map_err(PrimaryError::Catalog)?;
    for schema in schemas {
        if !grants.has("TRIGGER", schema) {
            return Err(missing(
                &grants,
                "TRIGGER",
                format!("`{schema}`.*"),
                "capgate records row changes with triggers it creates on each replicated table",
            ));
        }
    }
    for privilege in ["CREATE", "INSERT", "SELECT", "DELETE", "CREATE ROUTINE", "ALTER ROUTINE", "EXECUTE"] {
        if !grants.has(privilege, "capgate") {
            let privilege: &'static str = privilege;
            return Err(missing(
                &grants,
                privilege,
                "capgate.*".into(),
                "capgate keeps its change log and decision records in the `capgate` database, and the routines its capture \
                 triggers call",
            ));
        }
    }
    let (log_bin, trust): (i64, i64) =
        conn.query_first("SELECT @@log_bin, @@log_bin_trust_function_creators").await.map_err(PrimaryError::Catalog)?.unwrap_or((0, 0));
    if log_bin != 0 && trust == 0 && !grants.has_global("SUPER") {
        return Err(PrimaryError::BinlogTriggers { account: grants.grantee });
    }
    Ok(())
}

/// What the shippers of async and bounded tables need besides [`check_privileges`]' (decision
/// 0027): UPDATE on `capgate` (each replica's shipped position is upserted there) and
/// PROCESS (`information_schema.INNODB_TRX` tells when a number missing from
/// `capgate.changes` can no longer appear, decision 0021). The first missing one is named.
pub async fn check_shipping_privileges(conn: &mut mysql_async::Conn) -> Result<(), PrimaryError> {
    let grants = Grants::read(conn).await.map_err(PrimaryError::Catalog)?;
    if !grants.has("UPDATE", "capgate") {
        return Err(missing(
            &grants,
            "UPDATE",
            "capgate.*".into(),
            "the shippers of async and bounded tables record each replica's position in `capgate.shipped`",
        ));
    }
    if !grants.has_global("PROCESS") {
        return Err(missing(
            &grants,
            "PROCESS",
            "*.*".into(),
            "the shippers of async and bounded tables read information_schema.INNODB_TRX to tell when a number missing from \
             capgate.changes (a rolled-back transaction's) can no longer appear; without it every such hole is kept, looked up \
             in every batch, and capgate.changes is never pruned past the oldest one",
        ));
    }
    Ok(())
}

/// At a held COMMIT, inside the client's transaction, on its primary connection: the
/// transaction's sync changes in capture order ([`super::apply::Change`] columns), by a
/// consistent (non-locking) read.
pub const SYNC_READ: &str = "SELECT seq, tbl, op, old_image, new_image FROM capgate.sync_changes WHERE conn = CONNECTION_ID() ORDER BY seq";

/// Then, when there were any, in one round trip: the rows removed one by one by primary key
/// (never shipped later). Equality on the key takes a record lock on that row only; a
/// `DELETE … WHERE conn = …` took next-key locks on the `by_conn` index, and `seq IN (…)` on
/// a small table was run as a scan that locked every row: both deadlocked with other
/// sessions' captures under sysbench …
pub fn sync_delete(seqs: &[u64]) -> Vec<String> {
    seqs.iter().map(|seq| format!("DELETE FROM capgate.sync_changes WHERE seq = {seq}")).collect()
}

/// … and the decision record `gid`, inside the transaction.
pub fn sync_decide(gid: &str, origin: &str) -> String {
    format!(
        "INSERT INTO capgate.decisions (gid, origin, committed, at) VALUES ({}, {}, TRUE, UTC_TIMESTAMP(6))",
        super::image::quote_literal(gid),
        super::image::quote_literal(origin)
    )
}

/// [`SYNC_READ`], then [`sync_delete`] and [`sync_decide`] when there are changes, over a
/// mysql_async connection (capgate's own sessions, tests); the MySQL front end sends the same
/// statements on the client's connection.
pub async fn read_sync_changes(
    conn: &mut mysql_async::Conn,
    gid: &str,
    origin: &str,
) -> Result<Vec<super::apply::Change>, mysql_async::Error> {
    type Row = (u64, String, String, Option<String>, Option<String>);
    let rows: Vec<Row> = conn.query(SYNC_READ).await?;
    let changes: Vec<super::apply::Change> =
        rows.into_iter().map(|(seq, tbl, op, old, new)| super::apply::Change { seq, tbl, op, old, new }).collect();
    if !changes.is_empty() {
        for delete in sync_delete(&changes.iter().map(|c| c.seq).collect::<Vec<_>>()) {
            conn.query_drop(delete).await?;
        }
        conn.query_drop(sync_decide(gid, origin)).await?;
    }
    Ok(changes)
}

fn missing(grants: &Grants, privilege: &'static str, on: String, why: &'static str) -> PrimaryError {
    PrimaryError::Privilege { privilege, on, account: grants.grantee.clone(), why }
}

//! Capture on a MariaDB primary (decision 0015): the triggers capgate generates record exact
//! row images of every column type, which applied on a second MariaDB server give the same
//! rows byte for byte; sync tables record for the coordinator and refuse an uncoordinated
//! autocommit write; capgate's own apply sessions are not captured; DDL regenerates the
//! triggers and leaving the policy removes them; privileges are named when missing.

use std::path::Path;

use capgate::policy::Policy;
use capgate::store::mysql::apply::{self, Change};
use capgate::store::mysql::{capture, primary as store};
use capgate::store::CaptureMode;
use mysql_async::prelude::*;

use super::support::{connect, error_code, primary, replica, url_at};

/// Every type the image encoding names, with values at their edges.
const TABLE: &str = "CREATE TABLE {db}.t (
    id INT PRIMARY KEY, d DECIMAL(30,10), f FLOAT, dbl DOUBLE, dt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL,
    tm TIME(6), dte DATE, y YEAR, b BIT(10), bl BLOB, bn BINARY(4), j JSON, e ENUM('a','b c'), st SET('x','y','z'),
    g GEOMETRY, txt VARCHAR(20) CHARACTER SET latin1, u BIGINT UNSIGNED, i8 TINYINT, gen INT AS (id * 2) VIRTUAL)";

const ROWS: &str = "INSERT INTO {db}.t (id, d, f, dbl, dt, ts, tm, dte, y, b, bl, bn, j, e, st, g, txt, u, i8) VALUES
    (1, 12345678901234567890.0123456789, 1.0000001, 0.1e0 + 0.2e0, '2024-02-29 23:59:59.123456', '2024-03-01 01:02:03.5',
     '-838:59:59.000001', '2024-01-02', 2024, b'1010101010', X'00FF0A275C', X'00000001', '{\"a\":  1, \"b\":[1,2.50]}',
     'b c', 'x,z', ST_GeomFromText('POINT(1 2)', 4326), 'caf\u{e9} \\\\ ''q''', 18446744073709551615, -128),
    (2, -0.0000000001, 3.4028234e38, 1.7976931348623157e308, '1000-01-01 00:00:00', '1970-01-01 00:00:01',
     '00:00:00', '9999-12-31', 1901, b'0', X'', X'FF', '[]', 'a', '', ST_GeomFromText('LINESTRING(0 0, 1 1.5)'), '', 0, 127),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (4, 0, 1e-45, 4.9e-324, '2038-01-19 03:14:07.999999', '2038-01-19 03:14:07.999999', '838:59:59', '1000-01-01', 2155,
     b'1111111111', REPEAT(X'AB', 70000 DIV 2), X'0000', '\"x\"', 'b c', 'x,y,z', NULL, 'x', 1, 0)";

/// A reconciliation round makes the whole server match one policy: the tests that run one
/// take turns.
pub(super) static SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn policy(text: &str) -> Policy {
    Policy::parse(text, Path::new("policy.toml")).expect("policy")
}

/// A fresh database `db` with the all-types table on both servers.
fn create_on_both(db: &str) {
    let sql = format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}; {};", TABLE.replace("{db}", db));
    primary().sql(&sql).expect("primary table");
    replica().sql(&sql).expect("replica table");
}

/// seq, tbl, op, old_image, new_image.
type ChangeRow = (u64, String, String, Option<String>, Option<String>);

async fn changes_of(conn: &mut mysql_async::Conn, table: &str, from: &str) -> Vec<Change> {
    let rows: Vec<ChangeRow> = conn
        .exec(format!("SELECT seq, tbl, op, old_image, new_image FROM capgate.{from} WHERE tbl = ? ORDER BY seq"), (table,))
        .await
        .expect("read changes");
    rows.into_iter().map(|(seq, tbl, op, old, new)| Change { seq, tbl, op, old, new }).collect()
}

/// The rows of `db.t` as the server stores them: every column's bytes, independent of the
/// image encoding.
fn stored_rows(server: &capgate::testbed::MariaDb, db: &str) -> String {
    server
        .sql(&format!(
            "SELECT id, CAST(d AS CHAR), HEX(CAST(f AS DOUBLE)), dbl, HEX(CAST(dbl AS CHAR)), dt, UNIX_TIMESTAMP(ts), tm, dte, y, HEX(b), \
             MD5(bl), LENGTH(bl), HEX(bn), HEX(j), e, st, HEX(g), HEX(txt), u, i8, gen FROM {db}.t ORDER BY id; CHECKSUM TABLE {db}.t EXTENDED"
        ))
        .expect("read rows")
        .replace(db, "DB")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_column_type_round_trips_exactly_through_row_images() {
    let _turn = SERVER.lock().await;
    create_on_both("capvals");
    let mut admin = connect(&url_at(primary().port(), "capgate", None, "")).await;
    store::install(&mut admin).await.expect("install schema");
    store::check_privileges(&mut admin, &["capvals".into()]).await.expect("capgate has every privilege");
    let p = policy("default = \"local\"\n[[table]]\nmatch = \"capvals.*\"\nmode = \"async\"\n");
    let done = capture::reconcile(&mut admin, &p).await.expect("reconcile");
    assert!(done.installed.iter().any(|(t, m)| t.to_string() == "capvals.t" && *m == CaptureMode::Async), "{done:?}");
    assert!(done.failed.is_empty(), "{done:?}");

    // An application session (no capgate marker) writes in several transactions.
    let mut app = connect(&url_at(primary().port(), "app", Some(super::support::APP_PASSWORD), "capvals")).await;
    app.query_drop(ROWS.replace("{db}", "capvals")).await.expect("insert");
    app.query_drop("SET time_zone = '+09:00'").await.expect("tz");
    app.query_drop("UPDATE t SET ts = '2001-02-03 04:05:06.7', d = d * 3, bl = X'00', j = '{\"k\" : [ ]}' WHERE id IN (1, 2)")
        .await
        .expect("update");
    app.query_drop("BEGIN; DELETE FROM t WHERE id = 3; INSERT INTO t (id, txt) VALUES (5, 'later'); COMMIT").await.expect("tx");
    drop(app);

    let changes = changes_of(&mut admin, "capvals.t", "changes").await;
    assert_eq!(changes.iter().map(|c| c.op.as_str()).collect::<String>(), "IIIIUUDI", "{changes:?}");

    // Applied on the replica by an apply session, the rows are equal byte for byte.
    let mut apply_conn = connect(&format!("{}&client_found_rows=true", url_at(replica().port(), "capgate", None, ""))).await;
    apply::install(&mut apply_conn).await.expect("replica functions");
    apply_conn.query_drop(store::APPLY_MARKER).await.expect("marker");
    let tables = capture::tables(&mut apply_conn).await.expect("replica tables");
    let sql = apply::statements(&changes, &tables).expect("statements");
    apply_conn.query_drop(format!("BEGIN; {sql} COMMIT")).await.expect("apply");
    let (on_primary, on_replica) = (stored_rows(primary(), "capvals"), stored_rows(replica(), "capvals"));
    for (p, r) in on_primary.lines().zip(on_replica.lines()) {
        assert_eq!(p, r, "a row differs (primary, then replica)");
    }
    assert_eq!(on_primary.lines().count(), 5, "{on_primary}");
    assert_eq!(on_primary.lines().count(), on_replica.lines().count());

    // An old image that no longer matches the replica's row is a conflict, not a silent write.
    replica().sql("UPDATE capvals.t SET txt = 'other' WHERE id = 5").expect("diverge");
    let mut primary_app = connect(&url_at(primary().port(), "app", Some(super::support::APP_PASSWORD), "capvals")).await;
    primary_app.query_drop("UPDATE t SET y = 2000 WHERE id = 5").await.expect("update 5");
    let last = changes_of(&mut admin, "capvals.t", "changes").await.pop().expect("a change");
    let sql = apply::statements(&[last], &tables).expect("statements");
    let r = apply_conn.query_drop(format!("BEGIN; {sql} COMMIT")).await;
    let err = r.expect_err("conflict");
    assert!(err.to_string().contains("update_missing_or_differs capvals.t {\"id\":5}"), "{err}");
    apply_conn.query_drop("ROLLBACK").await.expect("rollback");
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_tables_record_for_the_coordinator_and_apply_sessions_are_not_captured() {
    let _turn = SERVER.lock().await;
    primary()
        .sql("DROP DATABASE IF EXISTS capsync; CREATE DATABASE capsync; CREATE TABLE capsync.acct (id INT PRIMARY KEY, bal INT)")
        .expect("table");
    let mut admin = connect(&url_at(primary().port(), "capgate", None, "")).await;
    store::install(&mut admin).await.expect("install schema");
    let p = policy("default = \"local\"\n[[table]]\nmatch = \"capsync.acct\"\nmode = \"sync\"\n");
    let done = capture::reconcile(&mut admin, &p).await.expect("reconcile");
    assert_eq!(done.captured.get(&capgate::classify::TableName::new("capsync", "acct")), Some(&CaptureMode::Sync));

    // A capgate client session: changes go to sync_changes for its COMMIT, and @capgate_sync
    // tells the front end the transaction holds some.
    let mut session = connect(&url_at(primary().port(), "app", Some(super::support::APP_PASSWORD), "capsync")).await;
    session.query_drop(store::SESSION_MARKER).await.expect("marker");
    session.query_drop("BEGIN").await.expect("begin");
    session.query_drop("INSERT INTO acct VALUES (1, 10), (2, 20)").await.expect("insert");
    let flag: Option<i64> = session.query_first("SELECT @capgate_sync").await.expect("flag");
    assert_eq!(flag, Some(1));
    let id: u64 = session.query_first("SELECT CONNECTION_ID()").await.expect("id").expect("id");
    let mine: Vec<(String, Option<String>)> =
        session.exec("SELECT op, new_image FROM capgate.sync_changes WHERE conn = ? ORDER BY seq", (id,)).await.expect("read");
    assert_eq!(mine, vec![("I".into(), Some(r#"{"id": 1, "bal": 10}"#.into())), ("I".into(), Some(r#"{"id": 2, "bal": 20}"#.into()))]);
    session.query_drop("ROLLBACK").await.expect("rollback");

    // Autocommit: the change would commit on the primary alone, so the trigger refuses it.
    let err = session.query_drop("INSERT INTO acct VALUES (3, 30)").await.expect_err("refused");
    assert_eq!(error_code(&err), 1644, "{err}");
    assert!(err.to_string().contains("sync table capsync.acct written outside a transaction capgate coordinates"), "{err}");
    let count: Option<i64> = session.query_first("SELECT COUNT(*) FROM acct").await.expect("count");
    assert_eq!(count, Some(0));

    // Written around capgate (no marker): recorded to be shipped later.
    primary().sql("INSERT INTO capsync.acct VALUES (4, 40)").expect("around");
    assert_eq!(changes_of(&mut admin, "capsync.acct", "changes").await.len(), 1);

    // capgate's own apply session: nothing is recorded.
    let mut applier = connect(&url_at(primary().port(), "capgate", None, "capsync")).await;
    applier.query_drop(store::APPLY_MARKER).await.expect("marker");
    applier.query_drop("INSERT INTO acct VALUES (5, 50); UPDATE acct SET bal = 0; DELETE FROM acct WHERE id = 5").await.expect("apply");
    assert_eq!(changes_of(&mut admin, "capsync.acct", "changes").await.len(), 1);
    assert!(changes_of(&mut admin, "capsync.acct", "sync_changes").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_follow_ddl_and_the_policy() {
    let _turn = SERVER.lock().await;
    primary()
        .sql(
            "DROP DATABASE IF EXISTS capddl; CREATE DATABASE capddl; CREATE TABLE capddl.items (id INT PRIMARY KEY, a INT); \
             CREATE TABLE capddl.nokey (a INT)",
        )
        .expect("tables");
    let mut admin = connect(&url_at(primary().port(), "capgate", None, "")).await;
    store::install(&mut admin).await.expect("install schema");
    let p = policy("default = \"local\"\n[[table]]\nmatch = \"capddl.*\"\nmode = \"async\"\n");
    let done = capture::reconcile(&mut admin, &p).await.expect("reconcile");
    let nokey = done.failed.iter().find(|(t, _)| t.name == "nokey").expect("nokey refused");
    assert!(nokey.1.contains("no primary key"), "{nokey:?}");
    // Nothing changed: a second round changes nothing.
    let again = capture::reconcile(&mut admin, &p).await.expect("reconcile");
    assert!(again.installed.iter().all(|(t, _)| t.schema != "capddl"), "{again:?}");

    // A new column: the next round regenerates the triggers and images carry it.
    primary().sql("ALTER TABLE capddl.items ADD COLUMN note VARCHAR(10) DEFAULT 'n'").expect("alter");
    let after = capture::reconcile(&mut admin, &p).await.expect("reconcile");
    assert!(after.installed.iter().any(|(t, _)| t.to_string() == "capddl.items"), "{after:?}");
    primary().sql("INSERT INTO capddl.items (id, a) VALUES (1, 1)").expect("insert");
    let images = changes_of(&mut admin, "capddl.items", "changes").await;
    assert_eq!(images.last().and_then(|c| c.new.clone()).as_deref(), Some(r#"{"id": 1, "a": 1, "note": "n"}"#));

    // The table leaves the policy: its triggers are removed and nothing more is recorded.
    let local = policy("default = \"local\"\n");
    let gone = capture::reconcile(&mut admin, &local).await.expect("reconcile");
    assert!(gone.removed.iter().any(|t| t.to_string() == "capddl.items"), "{gone:?}");
    let left = primary().sql("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'capddl'").expect("count");
    assert_eq!(left.trim(), "0");
    primary().sql("INSERT INTO capddl.items (id, a) VALUES (2, 2)").expect("insert");
    assert_eq!(changes_of(&mut admin, "capddl.items", "changes").await.len(), images.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_trigger_privilege_is_named() {
    primary()
        .sql(
            "DROP USER IF EXISTS 'weak'@'%'; CREATE USER 'weak'@'%'; CREATE DATABASE IF NOT EXISTS capweak; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON capweak.* TO 'weak'@'%'; GRANT ALL ON capgate.* TO 'weak'@'%'",
        )
        .expect("user");
    let mut weak = connect(&url_at(primary().port(), "weak", None, "")).await;
    let err = store::check_privileges(&mut weak, &["capweak".into()]).await.expect_err("missing TRIGGER");
    let text = err.to_string();
    assert!(text.contains("lacks TRIGGER") && text.contains("GRANT TRIGGER ON `capweak`.* TO 'weak'@'%'"), "{text}");
}

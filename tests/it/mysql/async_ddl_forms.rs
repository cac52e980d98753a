//! DDL of an async table through capgate (decision 0040) as applications and migration tools
//! send it: a statement that carries a comment before or inside its first words (a
//! migration's tag, a tool's hint) is carried like any other; a statement whose meaning
//! depends on the session's settings (its time zone) has the same effect on both sites.

use mysql_async::prelude::*;

use super::async_copy::copied;
use super::async_ship::{converged, link, proxy, servers, setup_both, TURN};
use super::support::connect;

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"formdb.*\"\nmode = \"async\"\n";

const TABLES: &str =
    "DROP DATABASE IF EXISTS formdb; CREATE DATABASE formdb; CREATE TABLE formdb.t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)";

const DEFINITION: &str = "SELECT GROUP_CONCAT(CONCAT_WS(' ', COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, IFNULL(COLUMN_DEFAULT, '-')) \
    ORDER BY ORDINAL_POSITION SEPARATOR ', ') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'formdb' AND TABLE_NAME = 't'";

#[tokio::test(flavor = "multi_thread")]
async fn ddl_with_a_comment_before_its_words_is_carried() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let (primary, _) = servers();
    let link = link();
    let (p, _) = proxy("mysql-ddl-comment", POLICY, &link);
    copied(&p, "formdb.t").await;
    let mut c = connect(&p.url("capgate", None, "formdb")).await;
    c.query_drop("/* migration 42 */ ALTER TABLE t ADD COLUMN c INT DEFAULT 7").await.expect("ALTER after a comment");
    c.query_drop("ALTER /* hint */ TABLE t ADD COLUMN d INT DEFAULT 8").await.expect("ALTER with a comment inside");
    c.query_drop("-- tagged\nCREATE INDEX by_c ON t (c)").await.expect("CREATE INDEX after a line comment");
    c.query_drop("INSERT INTO t VALUES (1, 'one', 10, 11)").await.expect("insert in the new shape");
    assert_eq!(converged("SELECT * FROM formdb.t ORDER BY id").await, "1\tone\t10\t11");
    assert_eq!(converged(DEFINITION).await, primary.sql(DEFINITION).expect("primary"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_depending_on_the_sessions_time_zone_fills_the_same_values_on_both_sites() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let link = link();
    let (p, _) = proxy("mysql-ddl-time-zone", POLICY, &link);
    copied(&p, "formdb.t").await;
    let mut c = connect(&p.url("capgate", None, "formdb")).await;
    c.query_drop("INSERT INTO t VALUES (1, 'one')").await.expect("insert");
    converged("SELECT * FROM formdb.t").await;
    // An application in its own time zone adds a column with a fixed default: every
    // existing row takes that instant.
    c.query_drop("SET time_zone = '+05:00'").await.expect("time zone");
    c.query_drop("ALTER TABLE t ADD COLUMN since TIMESTAMP NOT NULL DEFAULT '2026-01-01 00:00:00'").await.expect("ALTER");
    c.query_drop("INSERT INTO t (id, v) VALUES (2, 'two')").await.expect("insert after");
    // (Compared whole first: until the replica has `since`, a query naming it fails there.)
    converged("SELECT * FROM formdb.t ORDER BY id").await;
    assert_eq!(converged("SELECT id, v, UNIX_TIMESTAMP(since) FROM formdb.t ORDER BY id").await, "1\tone\t1767207600\n2\ttwo\t1767207600");
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_parsed_in_the_sessions_sql_mode_means_the_same_on_both_sites() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let link = link();
    let (p, _) = proxy("mysql-ddl-sql-mode", POLICY, &link);
    copied(&p, "formdb.t").await;
    let mut c = connect(&p.url("capgate", None, "formdb")).await;
    c.query_drop("INSERT INTO t VALUES (1, 'one')").await.expect("insert");
    // An application in ANSI mode: double quotes name columns, `||` concatenates.
    c.query_drop("SET sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT,STRICT_TRANS_TABLES'").await.expect("sql_mode");
    c.query_drop("ALTER TABLE t ADD COLUMN \"tagged\" VARCHAR(40) AS (v || '!') VIRTUAL").await.expect("ALTER");
    c.query_drop("INSERT INTO t (id, v) VALUES (2, 'two')").await.expect("insert after");
    converged("SELECT id, v FROM formdb.t ORDER BY id").await;
    assert_eq!(converged("SELECT * FROM formdb.t ORDER BY id").await, "1\tone\tone!\n2\ttwo\ttwo!");
}

#[tokio::test(flavor = "multi_thread")]
async fn renamed_reordered_and_converted_columns_keep_the_rows_equal() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let (primary, _) = servers();
    let link = link();
    let (p, _) = proxy("mysql-ddl-rename-column", POLICY, &link);
    copied(&p, "formdb.t").await;
    let mut c = connect(&p.url("capgate", None, "formdb")).await;
    // Each row is captured under the column names of its moment and applied on the same
    // side of each statement.
    for sql in [
        "INSERT INTO t VALUES (1, 'one')",
        "ALTER TABLE t RENAME COLUMN v TO w",
        "INSERT INTO t (id, w) VALUES (2, 'two')",
        "UPDATE t SET w = 'uno' WHERE id = 1",
        "ALTER TABLE t CHANGE w v2 VARCHAR(30) NOT NULL",
        "INSERT INTO t (id, v2) VALUES (3, 'three')",
        "ALTER TABLE t ADD COLUMN f INT NOT NULL DEFAULT 5 FIRST",
        "INSERT INTO t (f, id, v2) VALUES (9, 4, 'four')",
        "ALTER TABLE t CONVERT TO CHARACTER SET latin1",
        "UPDATE t SET v2 = 'café' WHERE id = 4",
    ] {
        c.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(converged("SELECT * FROM formdb.t ORDER BY id").await, "5\t1\tuno\n5\t2\ttwo\n5\t3\tthree\n9\t4\tcafé");
    assert_eq!(converged(DEFINITION).await, primary.sql(DEFINITION).expect("primary"));
    let charset = "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'formdb' AND COLUMN_NAME = 'v2'";
    assert_eq!(converged(charset).await, "latin1");
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_sent_from_a_database_only_the_primary_has_is_carried() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let (primary, _) = servers();
    primary.sql("DROP DATABASE IF EXISTS formscratch; CREATE DATABASE formscratch").expect("the primary's own database");
    let link = link();
    let (p, _) = proxy("mysql-ddl-other-database", POLICY, &link);
    copied(&p, "formdb.t").await;
    // A DBA's session sits in a database of the primary's own and names the table in full.
    let mut c = connect(&p.url("capgate", None, "formscratch")).await;
    c.query_drop("ALTER TABLE formdb.t ADD COLUMN c INT DEFAULT 7").await.expect("ALTER");
    c.query_drop("INSERT INTO formdb.t VALUES (1, 'one', 1)").await.expect("insert");
    assert_eq!(converged("SELECT * FROM formdb.t ORDER BY id").await, "1\tone\t1");
}

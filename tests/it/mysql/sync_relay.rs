//! Sync tables through capgate's MySQL front end (decision 0016): a client's COMMIT, as text
//! or as a prepared statement, commits on the primary and the replica; so does an autocommit
//! write (run in a transaction of capgate's own) and a transaction ended implicitly by BEGIN;
//! a replica whose rows differ makes the COMMIT (or the autocommit statement) fail with 1180 /
//! SQLSTATE CGC01 and nothing commits; a COMMIT inside a multi-statement query is refused.

use mysql_async::prelude::*;

use super::support::{connect, error_code, mariadb, primary, replica, MyProxy, APP_PASSWORD};
use super::sync::{rows, settled, setup};

use super::capture::SERVER;

pub(super) fn proxy(name: &str) -> MyProxy {
    proxy_with_policy(
        name,
        "default = \"local\"\n[[table]]\nmatch = \"cgsync.acct\"\nmode = \"sync\"\n[[table]]\nmatch = \"cgsync.notes\"\nmode = \"async\"\n",
    )
}

/// A capgate in front of the test primary, replicating to the test replica under `policy`.
pub(super) fn proxy_with_policy(name: &str, policy: &str) -> MyProxy {
    let dir = crate::support::scratch(name);
    std::fs::write(dir.join("policy.toml"), policy).expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n",
        primary().port(),
        replica().port()
    );
    MyProxy::start_config(&text, &dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn commits_through_capgate_reach_the_replica() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    let p = proxy("mysql-sync-relay");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;

    // Text COMMIT.
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("INSERT INTO acct VALUES (3, 300, 'c')").await.expect("insert");
    c.query_drop("UPDATE acct SET bal = bal + 1 WHERE id = 1").await.expect("update");
    c.query_drop("COMMIT").await.expect("commit");
    settled().await;
    assert_eq!(rows(primary()), "1\t101\ta\n2\t200\tb\n3\t300\tc");
    assert_eq!(rows(replica()), rows(primary()));

    // Prepared BEGIN and COMMIT, as sysbench sends them.
    c.exec_drop("BEGIN", ()).await.expect("begin");
    c.exec_drop("DELETE FROM acct WHERE id = ?", (3,)).await.expect("delete");
    c.exec_drop("COMMIT", ()).await.expect("commit");
    settled().await;
    assert_eq!(rows(replica()), "1\t101\ta\n2\t200\tb");

    // A read-only transaction and one with no transaction open commit as they came.
    c.query_drop("BEGIN").await.expect("begin");
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM acct").await.expect("read");
    assert_eq!(n, Some(2));
    c.query_drop("COMMIT").await.expect("commit");
    c.query_drop("COMMIT").await.expect("commit outside a transaction");

    // An autocommit write to a sync table runs in a transaction of capgate's own, coordinated;
    // the client sees its reply outside a transaction.
    c.query_drop("UPDATE acct SET bal = 0 WHERE id = 1").await.expect("autocommit update");
    assert_eq!(c.affected_rows(), 1);
    let open: Option<i64> = c.query_first("SELECT @@in_transaction").await.expect("read");
    assert_eq!(open, Some(0));
    c.exec_drop("INSERT INTO acct VALUES (?, ?, ?)", (4, 400, "d")).await.expect("prepared autocommit insert");
    settled().await;
    assert_eq!(rows(replica()), "1\t0\ta\n2\t200\tb\n4\t400\td");
    // An autocommit statement that fails on the primary reports its own error.
    let err = c.query_drop("INSERT INTO acct VALUES (4, 1, 'dup')").await.expect_err("duplicate");
    assert_eq!(error_code(&err), 1062, "{err}");

    // A BEGIN inside a transaction commits it implicitly: coordinated first.
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 41 WHERE id = 4").await.expect("update");
    c.query_drop("BEGIN").await.expect("implicit commit");
    c.query_drop("ROLLBACK").await.expect("rollback");
    settled().await;
    assert_eq!(rows(replica()), "1\t0\ta\n2\t200\tb\n4\t41\td");
    c.exec_drop("DELETE FROM acct WHERE id = ?", (4,)).await.expect("autocommit delete");
    c.exec_drop("UPDATE acct SET bal = ? WHERE id = ?", (101, 1)).await.expect("autocommit update");

    // A COMMIT inside a multi-statement query cannot be coordinated: refused before it runs.
    c.query_drop("BEGIN").await.expect("begin");
    let err = c.query_drop("UPDATE acct SET bal = 5 WHERE id = 1; COMMIT").await.expect_err("refused");
    assert!(err.to_string().contains("COMMIT must be sent as a statement of its own"), "{err}");
    c.query_drop("ROLLBACK").await.expect("rollback");
    assert_eq!(rows(primary()), "1\t101\ta\n2\t200\tb");
    // The application's own XA transactions cannot be coordinated: refused.
    let err = c.query_drop("XA START 'app-1'").await.expect_err("refused");
    assert!(err.to_string().contains("application XA transactions are not supported"), "{err}");
}

/// The mariadb command-line client in batch mode sends nothing before its first statement:
/// an autocommit write to a sync table as a connection's very first command is coordinated
/// (capgate knows autocommit is on from the session's start), not refused by the capture
/// trigger as a write outside a coordinated transaction.
#[tokio::test(flavor = "multi_thread")]
async fn an_autocommit_sync_write_as_a_connections_first_command_reaches_the_replica() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    let p = proxy("mysql-sync-relay-first");
    let password = format!("--password={APP_PASSWORD}");
    let out = mariadb(p.port(), &["-u", "app", &password, "cgsync"], "INSERT INTO acct VALUES (5, 500, 'e');\n");
    assert!(out.status.success(), "the insert failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = mariadb(p.port(), &["-u", "app", &password], "UPDATE cgsync.acct SET bal = 501 WHERE id = 5;\n");
    assert!(out.status.success(), "the update failed: {}", String::from_utf8_lossy(&out.stderr));
    settled().await;
    assert_eq!(rows(primary()), "1\t100\ta\n2\t200\tb\n5\t501\te");
    assert_eq!(rows(replica()), rows(primary()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_the_replica_cannot_take_fails_with_nothing_committed() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    replica().sql("UPDATE cgsync.acct SET note = 'elsewhere' WHERE id = 2").expect("diverge");
    let p = proxy("mysql-sync-relay-conflict");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 7 WHERE id = 2").await.expect("update");
    let err = c.query_drop("COMMIT").await.expect_err("refused");
    let mysql_async::Error::Server(e) = &err else { panic!("{err}") };
    assert_eq!((e.code, e.state.as_str()), (1180, "CGC01"), "{err}");
    assert!(e.message.contains("replica \"east\"") && e.message.contains("capgate verify"), "{err}");
    settled().await;
    assert_eq!(rows(primary()), "1\t100\ta\n2\t200\tb", "the primary rolled back");
    assert_eq!(rows(replica()), "1\t100\ta\n2\t200\telsewhere");
    // An autocommit write the replica cannot take is refused the same way.
    let err = c.query_drop("UPDATE acct SET bal = 9 WHERE id = 2").await.expect_err("refused");
    let mysql_async::Error::Server(e) = &err else { panic!("{err}") };
    assert_eq!((e.code, e.state.as_str()), (1180, "CGC01"), "{err}");
    settled().await;
    assert_eq!(rows(primary()), "1\t100\ta\n2\t200\tb");
    // The session goes on.
    let status: Option<i64> = c.query_first("SELECT @@in_transaction").await.expect("read");
    assert_eq!(status, Some(0));
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 8 WHERE id = 1").await.expect("update");
    c.query_drop("COMMIT").await.expect("commit");
    settled().await;
    assert_eq!(rows(replica()), "1\t8\ta\n2\t200\telsewhere");
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_through_capgate_brings_capture_in_step_before_its_reply() {
    let _turn = SERVER.lock().await;
    let (_, mut admin) = setup().await;
    let p = proxy("mysql-sync-relay-ddl");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;

    // A new table an async rule matches is captured from its first write.
    c.query_drop("CREATE TABLE notes (id INT PRIMARY KEY, body TEXT)").await.expect("create");
    c.query_drop("INSERT INTO notes VALUES (1, 'first')").await.expect("insert");
    let logged: Vec<String> =
        admin.query("SELECT new_image FROM capgate.changes WHERE tbl = 'cgsync.notes' ORDER BY seq").await.expect("changes");
    assert_eq!(logged, vec![r#"{"id": 1, "body": "first"}"#.to_string()]);

    // A column added to a sync table (on the replica by the DBA, through capgate on the
    // primary, inside a transaction that DDL commits) travels with the next commit.
    replica().sql("ALTER TABLE cgsync.acct ADD COLUMN flag INT NOT NULL DEFAULT 0").expect("replica alter");
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 5 WHERE id = 1").await.expect("update");
    c.query_drop("ALTER TABLE acct ADD COLUMN flag INT NOT NULL DEFAULT 0").await.expect("alter");
    c.query_drop("UPDATE acct SET flag = 7 WHERE id = 2").await.expect("autocommit update");
    settled().await;
    let on = |server: &capgate::testbed::MariaDb| server.sql("SELECT id, bal, flag FROM cgsync.acct ORDER BY id").expect("rows");
    assert_eq!(on(primary()), "1\t5\t0\n2\t200\t7");
    assert_eq!(on(replica()), on(primary()));

    // SET autocommit = 1 commits an open transaction implicitly: coordinated first.
    c.query_drop("SET autocommit = 0").await.expect("autocommit off");
    c.query_drop("UPDATE acct SET bal = 6 WHERE id = 1").await.expect("update in an implicit transaction");
    c.query_drop("SET autocommit = 1").await.expect("autocommit on");
    settled().await;
    assert_eq!(on(primary()), "1\t6\t0\n2\t200\t7");
    assert_eq!(on(replica()), on(primary()));
}

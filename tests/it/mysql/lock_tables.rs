//! Two MySQL holes of issue 15, through capgate against real MariaDB servers.
//!
//! A write to a sync table after a stored program's `END`, in the same multi-statement query
//! and in autocommit mode, is coordinated like any sync write: it reaches the replica, and
//! during a partition it gets the sync refusal (MariaDB runs it as a statement of its own
//! after the definition; capgate used to take the definition to run to the end of the text).
//!
//! `LOCK TABLES … WRITE` on replicated tables (decision 0031), while another session's
//! transaction has read `capgate.changes` (as capgate's shippers do all the time; MariaDB
//! 10.11 then failed a write to a table locked that way with error 1442 while its three
//! capture triggers wrote `capgate.changes` themselves): writes under the lock, to an async
//! table and to a sync table (autocommit on or off, the client's lock kept), reach the
//! replica; so does a `mariadb-dump` restore piped through capgate by an account with the
//! documented grants, and one written straight into the primary.

use std::time::Duration;

use capgate::sites::State;
use mysql_async::prelude::*;

use super::async_ship::{converged, servers, setup_both, TURN};
use super::capture::SERVER;
use super::support::{connect, error_code, mariadb, primary, replica, url_at, MyProxy, APP_PASSWORD};
use super::sync::{rows, settled, settled_at, setup};
use super::sync_faults::sync_proxy_behind_link;

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_write_after_a_stored_programs_end_is_coordinated() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    let (link, p) = sync_proxy_behind_link("mysql-after-end");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    let routines = |name: &str| {
        primary()
            .sql(&format!("SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'cgsync' AND ROUTINE_NAME = '{name}'"))
            .expect("routines")
    };

    // A session's very first statement, an autocommit write, is coordinated too (capgate
    // read the session's autocommit flag only from the replies to its commands).
    let out = mariadb(p.port(), &["-u", "app", &format!("-p{APP_PASSWORD}"), "cgsync", "-e", "UPDATE acct SET bal = 6 WHERE id = 2"], "");
    assert!(out.status.success(), "first statement: {}", String::from_utf8_lossy(&out.stderr));
    settled().await;
    assert_eq!(rows(replica()), "1\t100\ta\n2\t6\tb");

    // Autocommit on: the definition is created, and the UPDATE after its END commits on both
    // sites (bodies with nested blocks, IF … END IF, a labelled loop, `;` and END in strings).
    c.query_drop(
        "CREATE PROCEDURE p1(IN n INT) BEGIN DECLARE i INT DEFAULT 0; IF n > 0 THEN SELECT 'END; IF'; END IF; \
         l: LOOP SET i = i + 1; IF i >= n THEN LEAVE l; END IF; END LOOP l; BEGIN SELECT i; END; END; \
         UPDATE acct SET bal = 7 WHERE id = 1",
    )
    .await
    .expect("the definition and the update after it");
    c.query_drop("CREATE PROCEDURE p0() IF 1 THEN SELECT 1; END IF; UPDATE acct SET bal = 8 WHERE id = 2").await.expect("an IF body");
    settled().await;
    assert_eq!(rows(primary()), "1\t7\ta\n2\t8\tb");
    assert_eq!(rows(replica()), rows(primary()), "the update after END committed on the primary alone");
    assert_eq!((routines("p1"), routines("p0")), ("1".into(), "1".into()));

    // During a partition the update gets the sync refusal and stays undone; the definition
    // before it ran, as it does on MariaDB when a later statement of the query fails.
    link.blackhole();
    let east = p.shared.sites.get("east").expect("replica east is watched");
    let err = c.query_drop("CREATE PROCEDURE p2() BEGIN SELECT 1; END; UPDATE acct SET bal = 9 WHERE id = 1").await.expect_err("refused");
    assert!(
        matches!(&err, mysql_async::Error::Server(e) if e.code == 1180 && e.state == "55000" && e.message.contains("replica \"east\"")),
        "expected the sync refusal, got: {err}"
    );
    assert_eq!(rows(primary()), "1\t7\ta\n2\t8\tb");
    assert_eq!(routines("p2"), "1");
    link.restore();
    east.health().wait_state(State::Healthy, Duration::from_secs(30)).await.expect("east healthy again");

    // With autocommit off the update joins the transaction the next COMMIT coordinates.
    c.query_drop("SET autocommit = 0").await.expect("autocommit off");
    c.query_drop("CREATE PROCEDURE p3() BEGIN SELECT 1; END; UPDATE acct SET bal = 10 WHERE id = 1").await.expect("in a transaction");
    c.query_drop("COMMIT").await.expect("commit");
    c.query_drop("SET autocommit = 1").await.expect("autocommit on");
    settled().await;
    assert_eq!(rows(primary()), "1\t10\ta\n2\t8\tb");
    assert_eq!(rows(replica()), rows(primary()));
}

const POLICY: &str = "default = \"local\"\n\
    [[table]]\nmatch = \"lockdb.views\"\nmode = \"async\"\n\
    [[table]]\nmatch = \"lockdb.spare\"\nmode = \"async\"\n\
    [[table]]\nmatch = \"lockdb.acct\"\nmode = \"sync\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn writes_under_lock_tables_and_a_dump_restore_reach_the_replica() {
    let _turn = TURN.lock().await;
    let (primary, replica) = servers();
    setup_both(
        "DROP DATABASE IF EXISTS lockdb; CREATE DATABASE lockdb; \
         CREATE TABLE lockdb.views (id INT PRIMARY KEY, path VARCHAR(40)); CREATE TABLE lockdb.spare (id INT PRIMARY KEY); \
         CREATE TABLE lockdb.acct (id INT PRIMARY KEY, bal INT NOT NULL); INSERT INTO lockdb.acct VALUES (1, 100)",
    );
    // An application account with the grants CONFIG.md names for writing sync tables and
    // locking them: nothing more on `capgate`.
    primary
        .sql(
            "DROP USER IF EXISTS 'restorer'@'%'; CREATE USER 'restorer'@'%' IDENTIFIED BY 'r-secret'; \
             GRANT ALL ON lockdb.* TO 'restorer'@'%'; GRANT SELECT, INSERT, DELETE, LOCK TABLES ON capgate.* TO 'restorer'@'%'",
        )
        .expect("user");
    let dir = crate::support::scratch("mysql-lock-tables");
    std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n",
        primary.port(),
        replica.port()
    );
    let p = MyProxy::start_config(&text, &dir);
    let mut c = connect(&p.url("restorer", Some("r-secret"), "lockdb")).await;
    // A transaction that has read capgate's change log, open throughout, as a shipper's may be.
    let mut reader = connect(&url_at(primary.port(), "capgate", None, "")).await;
    reader.query_drop("BEGIN").await.expect("begin");
    reader.query_drop("SELECT COUNT(*) FROM capgate.changes").await.expect("read the change log");

    // An async table: written under LOCK TABLES … WRITE (MariaDB failed these with error 1442
    // while capture triggers wrote capgate.changes themselves).
    c.query_drop("LOCK TABLES views WRITE").await.expect("lock");
    c.query_drop("INSERT INTO views VALUES (1, '/a'), (2, '/b')").await.expect("insert under the lock");
    c.query_drop("INSERT INTO views VALUES (3, '/c')").await.expect("insert under the lock");
    c.query_drop("UPDATE views SET path = '/bb' WHERE id = 2").await.expect("update under the lock");
    c.query_drop("DELETE FROM views WHERE id = 1").await.expect("delete under the lock");
    c.query_drop("UNLOCK TABLES").await.expect("unlock");
    assert_eq!(converged("SELECT id, path FROM lockdb.views ORDER BY id").await, "2\t/bb\n3\t/c");

    // A sync table, autocommit on: each write is coordinated without giving up the lock
    // (capgate's BEGIN would have released it).
    c.query_drop("LOCK TABLES acct WRITE").await.expect("lock");
    c.query_drop("UPDATE acct SET bal = 101 WHERE id = 1").await.expect("update under the lock");
    c.query_drop("INSERT INTO acct VALUES (2, 200)").await.expect("insert under the lock");
    let mut other = connect(&url_at(primary.port(), "capgate", None, "lockdb")).await;
    other.query_drop("SET SESSION lock_wait_timeout = 1").await.expect("timeout");
    let err = other.query_drop("SELECT * FROM acct").await.expect_err("the client's lock is held");
    assert_eq!(error_code(&err), 1205, "{err}");
    // Committed on the replica while the lock is still held (its XA COMMIT follows the
    // client's answer: wait for it, as `settled` does, before reading).
    settled_at(replica).await;
    assert_eq!(replica.sql("SELECT id, bal FROM lockdb.acct ORDER BY id").expect("replica"), "1\t101\n2\t200", "coordinated");
    c.query_drop("UNLOCK TABLES").await.expect("unlock");
    // The same with LOCK TABLES and UNLOCK TABLES prepared (COM_STMT_PREPARE).
    let lock = c.prep("LOCK TABLES acct WRITE").await.expect("prepare lock");
    let unlock = c.prep("UNLOCK TABLES").await.expect("prepare unlock");
    c.exec_drop(&lock, ()).await.expect("lock");
    c.query_drop("UPDATE acct SET bal = 150 WHERE id = 2").await.expect("update under the prepared lock");
    let err = other.query_drop("SELECT * FROM acct").await.expect_err("the client's lock is held");
    assert_eq!(error_code(&err), 1205, "{err}");
    c.exec_drop(&unlock, ()).await.expect("unlock");
    // Autocommit off, the way the MariaDB manual pairs LOCK TABLES with InnoDB: the sync and
    // the async table written in one transaction under one lock, while other sessions read
    // capgate's change log (as the shipper does). A few rounds: MariaDB refused the async
    // write with error 1442 in some tries only (which cached instance of capgate.changes the
    // lock took) until capgate locked capgate.changes explicitly; net, one +1 and id 4.
    c.query_drop("SET autocommit = 0").await.expect("autocommit off");
    for round in 0..5 {
        other.query_drop("SELECT COUNT(*) FROM capgate.changes").await.expect("another session reads the change log");
        c.query_drop("LOCK TABLES acct WRITE, views WRITE").await.expect("lock");
        let step = if round % 2 == 0 { "+ 1" } else { "- 1" };
        c.query_drop(format!("UPDATE acct SET bal = bal {step}")).await.expect("update");
        let id = 4 + round;
        c.query_drop(format!("INSERT INTO views VALUES ({id}, '/d')")).await.unwrap_or_else(|e| panic!("insert, round {round}: {e}"));
        if round > 0 {
            c.query_drop(format!("DELETE FROM views WHERE id = {id}")).await.expect("delete");
        }
        c.query_drop("COMMIT").await.expect("commit, coordinated");
        c.query_drop("UNLOCK TABLES").await.expect("unlock");
    }
    // The same in one query: its UNLOCK TABLES would commit the sync write in the middle of
    // the query, where capgate cannot coordinate it (found by review: the lock state was the
    // one before the query, so the UNLOCK counted as no commit, and the write committed on the
    // primary alone). Refused before any of it runs.
    let err = c.query_drop("LOCK TABLES acct WRITE; UPDATE acct SET bal = 55 WHERE id = 1; UNLOCK TABLES").await.unwrap_err();
    assert_eq!(error_code(&err), 1235, "{err}");
    assert!(err.to_string().contains("UNLOCK TABLES"), "{err}");
    c.query_drop("ROLLBACK").await.expect("rollback");
    c.query_drop("SET autocommit = 1").await.expect("autocommit on");
    assert_eq!(primary.sql("SELECT COUNT(*) FROM capgate.sync_changes").expect("sync changes"), "0", "no orphan change");
    assert_eq!(converged("SELECT id, bal FROM lockdb.acct ORDER BY id").await, "1\t102\n2\t151");
    assert_eq!(converged("SELECT COUNT(*) FROM lockdb.views").await, "3");

    // A mariadb-dump of both tables (each one's INSERTs inside LOCK TABLES … WRITE), restored
    // through capgate with the mariadb client.
    primary
        .sql(
            "DROP DATABASE IF EXISTS dumpsrc; CREATE DATABASE dumpsrc; \
             USE dumpsrc; CREATE TABLE dumpsrc.views (id INT PRIMARY KEY, path VARCHAR(40)); \
             INSERT INTO dumpsrc.views SELECT seq, CONCAT('/dump/', seq) FROM seq_100_to_1099; \
             CREATE TABLE dumpsrc.acct (id INT PRIMARY KEY, bal INT NOT NULL); \
             INSERT INTO dumpsrc.acct SELECT seq, seq * 10 FROM seq_100_to_149",
        )
        .expect("source tables");
    let both = dump(primary.port(), &["dumpsrc", "views", "acct"]);
    assert!(both.contains("LOCK TABLES `views` WRITE;") && both.contains("LOCK TABLES `acct` WRITE;"), "{both:.400}");
    let out = mariadb(p.port(), &["-u", "restorer", "-pr-secret", "lockdb"], &both);
    assert!(out.status.success(), "restore through capgate: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(converged("SELECT COUNT(*), SUM(id) FROM lockdb.views").await, "1003\t599509");
    assert_eq!(converged("SELECT COUNT(*), SUM(bal) FROM lockdb.acct").await, "52\t62503");

    // The same kind of restore straight into the primary, around capgate: captured and shipped.
    reader.query_drop("SELECT COUNT(*) FROM capgate.changes").await.expect("read the change log again");
    primary.sql("UPDATE dumpsrc.views SET id = id + 10000").expect("other keys");
    let views = dump(primary.port(), &["dumpsrc", "views"]);
    let out = mariadb(primary.port(), &["-u", "capgate", "lockdb"], &views);
    assert!(out.status.success(), "restore into the primary: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(converged("SELECT COUNT(*) FROM lockdb.views").await, "2003");
    reader.query_drop("COMMIT").await.expect("commit");

    // DDL that changes a captured table under the session's own LOCK TABLES: its triggers
    // cannot be replaced while the session holds the table (capgate used to wait for that
    // lock, and the client for capgate), nor can capgate lock it to carry the statement to
    // the replicas (decision 0040): refused, nothing run; after UNLOCK TABLES it is carried
    // and the triggers follow.
    c.query_drop("LOCK TABLES spare WRITE").await.expect("lock");
    let err = c.query_drop("ALTER TABLE spare ADD COLUMN extra INT NULL").await.expect_err("alter under the lock");
    assert!(err.to_string().contains("UNLOCK TABLES first") && err.to_string().contains("lockdb.spare"), "{err}");
    c.query_drop("UNLOCK TABLES").await.expect("unlock");
    c.query_drop("ALTER TABLE spare ADD COLUMN extra INT NULL").await.expect("alter");
    c.query_drop("INSERT INTO spare VALUES (1, 1)").await.expect("insert");
    assert_eq!(converged("SELECT * FROM lockdb.spare").await, "1\t1");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let trigger = "SELECT ACTION_STATEMENT FROM information_schema.TRIGGERS WHERE TRIGGER_NAME = 'capgate_i_spare'";
    while !primary.sql(trigger).expect("trigger").contains("NEW.`extra`") {
        assert!(std::time::Instant::now() < deadline, "the triggers never followed the ALTER");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A whole dump (each table dropped, created and filled) restored through capgate into an
/// async table, with a policy that has no sync table: the capture triggers the `DROP TABLE`
/// took away are put back after the `CREATE TABLE`, before the rows come (DDL was not held
/// without a sync rule, and the restored rows were never captured).
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_dump_restored_through_capgate_is_captured_without_sync_rules() {
    let _turn = TURN.lock().await;
    let (primary, _) = servers();
    setup_both(
        "DROP DATABASE IF EXISTS lockdb2; CREATE DATABASE lockdb2; CREATE TABLE lockdb2.pages (id INT PRIMARY KEY, path VARCHAR(40))",
    );
    primary
        .sql(
            "DROP DATABASE IF EXISTS dumpsrc2; CREATE DATABASE dumpsrc2; USE dumpsrc2; \
             CREATE TABLE pages (id INT PRIMARY KEY, path VARCHAR(40)); INSERT INTO pages SELECT seq, CONCAT('/', seq) FROM seq_1_to_500",
        )
        .expect("source table");
    let dir = crate::support::scratch("mysql-whole-dump");
    std::fs::write(dir.join("policy.toml"), "default = \"local\"\n[[table]]\nmatch = \"lockdb2.pages\"\nmode = \"async\"\n")
        .expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n",
        primary.port(),
        servers().1.port()
    );
    let p = MyProxy::start_config(&text, &dir);
    // The table has entered replication (its copy at start is done) before it is replaced.
    super::async_copy::copied(&p, "lockdb2.pages").await;
    let out = std::process::Command::new("mariadb-dump")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-u", "capgate", "dumpsrc2", "pages"])
        .arg(format!("--port={}", primary.port()))
        .output()
        .expect("run mariadb-dump");
    let whole = String::from_utf8(out.stdout).expect("utf-8 dump");
    assert!(whole.contains("DROP TABLE IF EXISTS `pages`;") && whole.contains("CREATE TABLE `pages`"), "{whole:.600}");
    let out = mariadb(p.port(), &["-u", "capgate", "lockdb2"], &whole);
    assert!(out.status.success(), "restore through capgate: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(converged("SELECT COUNT(*), SUM(id) FROM lockdb2.pages").await, "500\t125250");
}

/// `mariadb-dump --no-create-info` of `args` (a database, then tables) from the server on `port`.
fn dump(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("mariadb-dump")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-u", "capgate", "--no-create-info"])
        .arg(format!("--port={port}"))
        .args(args)
        .output()
        .expect("run mariadb-dump");
    assert!(out.status.success(), "mariadb-dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 dump")
}

//! Statements that commit a transaction implicitly, on a sync table (decision 0027). Sent as
//! a query of their own — DDL, TRUNCATE (of any table), ANALYZE TABLE, FLUSH, UNLOCK TABLES
//! while tables are locked — the open transaction is coordinated first: its rows are on the
//! replica. In a multi-statement query after a write to a sync table, the query is refused
//! before any of it runs, naming the statement, the table and the remedy. A temporary table
//! commits nothing, so a ROLLBACK after it still rolls back. TRUNCATE of a sync table (it
//! fires no trigger) is carried in a coordinated commit (decision 0029). Every spelling of `SET autocommit = 1` (`:=`, `'ON'`,
//! `DEFAULT`, `@@session.` …) commits when autocommit was off, coordinated; a prepared one
//! inside `BEGIN` with autocommit on commits nothing, as the text one. Around a stored
//! program's definition (it ends at its body's `END`, decision 0031) each statement is judged
//! by its own text.

use mysql_async::prelude::*;

use super::support::{connect, error_code, primary, replica, APP_PASSWORD};
use super::sync::{rows, settled, setup};
use super::sync_relay::proxy;

use super::capture::SERVER;

#[tokio::test(flavor = "multi_thread")]
async fn implicit_commits_are_coordinated_or_refused_with_the_statement_named() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    primary().sql("CREATE TABLE cgsync.scratch (a INT)").expect("local table");
    let p = proxy("mysql-sync-implicit");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;

    // A multi-statement query whose DDL would commit a sync write of the same query: refused,
    // nothing of it runs; the transaction open before it is still open, and commits normally.
    c.query_drop("SET autocommit = 0").await.expect("autocommit off");
    c.query_drop("UPDATE acct SET bal = 1 WHERE id = 1").await.expect("update");
    let err = c.query_drop("UPDATE acct SET bal = 2 WHERE id = 2; CREATE TABLE cgsync.x (a INT)").await.expect_err("refused");
    assert_eq!(error_code(&err), 1235, "{err}");
    for words in [
        "`CREATE TABLE cgsync.x (a INT)` (statement 2 of 2)",
        "`UPDATE acct SET bal = 2 WHERE id = 2`",
        "cgsync.acct",
        "as a query of its own",
    ] {
        assert!(err.to_string().contains(words), "{words:?} missing from: {err}");
    }
    assert_eq!(primary().sql("SHOW TABLES FROM cgsync LIKE 'x'").expect("tables"), "", "nothing of the query ran");
    c.query_drop("COMMIT").await.expect("commit");
    settled().await;
    assert_eq!(rows(primary()), "1\t1\ta\n2\t200\tb");
    assert_eq!(rows(replica()), rows(primary()));
    c.query_drop("SET autocommit = 1").await.expect("autocommit on");

    // BEGIN … BEGIN in one query: the second BEGIN would commit the first's sync write.
    let err = c.query_drop("BEGIN; UPDATE acct SET bal = 3 WHERE id = 1; START TRANSACTION").await.expect_err("refused");
    assert!(err.to_string().contains("`START TRANSACTION` (statement 3 of 3)"), "{err}");
    assert_eq!(c.query_first::<i64, _>("SELECT @@in_transaction").await.expect("read"), Some(0), "nothing ran");

    // Sent alone, each commits the transaction before it: coordinated, on both sites.
    for (n, statement) in ["ANALYZE TABLE acct", "TRUNCATE scratch", "FLUSH TABLES", "CREATE TABLE y (a INT)"].iter().enumerate() {
        c.query_drop("BEGIN").await.expect("begin");
        c.query_drop(format!("UPDATE acct SET bal = {} WHERE id = 2", 10 + n)).await.expect("update");
        c.query_drop(*statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
        assert_eq!(c.query_first::<i64, _>("SELECT @@in_transaction").await.expect("read"), Some(0), "{statement}");
        c.query_drop("ROLLBACK").await.expect("rollback (nothing left to roll back)");
        let (on_primary, on_replica) = both().await;
        assert_eq!(on_primary, format!("1\t1\ta\n2\t{}\tb", 10 + n), "{statement}");
        assert_eq!(on_replica, on_primary, "{statement} committed the sync transaction on the primary alone");
    }

    // LOCK TABLES commits too (coordinated); UNLOCK TABLES then commits what was written
    // under the lock (coordinated, though only local tables can be written there: the
    // capture trigger of a locked sync table cannot write capgate's tables).
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 20 WHERE id = 2").await.expect("update");
    c.query_drop("LOCK TABLES scratch WRITE").await.expect("lock");
    c.query_drop("INSERT INTO scratch VALUES (1)").await.expect("insert under the lock");
    c.query_drop("UNLOCK TABLES").await.expect("unlock");
    let (on_primary, on_replica) = both().await;
    assert_eq!(on_primary, "1\t1\ta\n2\t20\tb", "LOCK TABLES");
    assert_eq!(on_replica, on_primary, "LOCK TABLES committed the sync transaction on the primary alone");

    // SET autocommit = 1 inside BEGIN (autocommit already on) commits nothing either.
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 998 WHERE id = 1").await.expect("update");
    c.query_drop("SET autocommit = 1").await.expect("autocommit on, again");
    c.query_drop("ROLLBACK").await.expect("rollback");
    let (on_primary, on_replica) = both().await;
    assert_eq!(on_primary, "1\t1\ta\n2\t20\tb", "SET autocommit = 1 committed a BEGIN transaction");
    assert_eq!(on_replica, on_primary);

    // TRUNCATE of a sync table fires no trigger: capgate carries it (decision 0029). The
    // open transaction commits first, coordinated; then the rows go on both sites in one
    // coordinated commit. Prepared, the same. The rows are put back for what follows.
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 21 WHERE id = 2").await.expect("update");
    c.query_drop("TRUNCATE TABLE acct").await.expect("TRUNCATE of a sync table");
    assert_eq!(c.query_first::<i64, _>("SELECT @@in_transaction").await.expect("read"), Some(0));
    let (on_primary, on_replica) = both().await;
    assert_eq!((on_primary.as_str(), on_replica.as_str()), ("", ""), "TRUNCATE of a sync table");
    c.query_drop("INSERT INTO acct VALUES (1, 1, 'a')").await.expect("insert");
    let truncate = c.prep("TRUNCATE acct").await.expect("prepare TRUNCATE");
    c.exec_drop(&truncate, ()).await.expect("execute TRUNCATE");
    let (on_primary, on_replica) = both().await;
    assert_eq!((on_primary.as_str(), on_replica.as_str()), ("", ""), "a prepared TRUNCATE of a sync table");
    c.query_drop("INSERT INTO acct VALUES (1, 1, 'a'), (2, 20, 'b')").await.expect("insert");
    let (on_primary, on_replica) = both().await;
    assert_eq!(on_primary, "1\t1\ta\n2\t20\tb");
    assert_eq!(on_replica, on_primary);

    // A temporary table commits nothing: the ROLLBACK after it rolls the write back.
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 999 WHERE id = 1").await.expect("update");
    c.query_drop("CREATE TEMPORARY TABLE tmp (a INT)").await.expect("temporary table");
    c.query_drop("ROLLBACK").await.expect("rollback");
    let (on_primary, on_replica) = both().await;
    assert_eq!(on_primary, "1\t1\ta\n2\t20\tb", "CREATE TEMPORARY TABLE committed the transaction");
    assert_eq!(on_replica, on_primary);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_spelling_of_autocommit_on_prepared_or_not_and_queries_capgate_cannot_cut() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    primary().sql("CREATE TABLE cgsync.scratch (a INT)").expect("local table");
    let p = proxy("mysql-sync-implicit-spellings");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;

    // With autocommit off, each spelling turns it on and commits the open transaction
    // (MariaDB 10.11): coordinated, on both sites.
    let spellings = [
        "SET autocommit := 1",
        "SET autocommit = 'ON'",
        "SET autocommit = DEFAULT",
        "SET @@autocommit=1",
        "SET SESSION autocommit=1",
        "SET @@session.autocommit = 1",
        "SET @x = 1, autocommit = true",
    ];
    for (n, statement) in spellings.iter().enumerate() {
        c.query_drop("SET autocommit = 0").await.expect("autocommit off");
        c.query_drop(format!("UPDATE acct SET bal = {} WHERE id = 1", 30 + n)).await.expect("update");
        c.query_drop(*statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
        assert_eq!(c.query_first::<i64, _>("SELECT @@in_transaction").await.expect("read"), Some(0), "{statement}");
        c.query_drop("ROLLBACK").await.expect("rollback (nothing left to roll back)");
        let (on_primary, on_replica) = both().await;
        assert_eq!(on_primary, format!("1\t{}\ta\n2\t200\tb", 30 + n), "{statement}");
        assert_eq!(on_replica, on_primary, "{statement} committed the sync transaction on the primary alone");
    }

    // A prepared SET autocommit = 1 is held like the text one: inside BEGIN with autocommit
    // on it commits nothing, and the ROLLBACK after it rolls the update back ...
    let on = c.prep("SET autocommit = 1").await.expect("prepare");
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 997 WHERE id = 1").await.expect("update");
    c.exec_drop(&on, ()).await.expect("autocommit on, again (prepared)");
    assert_eq!(c.query_first::<i64, _>("SELECT @@in_transaction").await.expect("read"), Some(1), "still open");
    c.query_drop("ROLLBACK").await.expect("rollback");
    let (on_primary, on_replica) = both().await;
    let last = format!("1\t{}\ta\n2\t200\tb", 30 + spellings.len() - 1);
    assert_eq!(on_primary, last, "a prepared SET autocommit = 1 committed a BEGIN transaction");
    assert_eq!(on_replica, on_primary);
    // ... and with autocommit off it commits, coordinated.
    c.query_drop("SET autocommit = 0").await.expect("autocommit off");
    c.query_drop("UPDATE acct SET bal = 40 WHERE id = 1").await.expect("update");
    c.exec_drop(&on, ()).await.expect("autocommit on (prepared)");
    c.query_drop("ROLLBACK").await.expect("rollback (nothing left to roll back)");
    let (on_primary, on_replica) = both().await;
    assert_eq!(on_primary, "1\t40\ta\n2\t200\tb");
    assert_eq!(on_replica, on_primary, "a prepared SET autocommit = 1 committed on the primary alone");

    // A stored program's body holds semicolons of its own; its definition ends at its `END`:
    // a definition (it commits) after a sync write is refused, and so is a TRUNCATE of a
    // replicated table after one (carried only as a query of its own); nothing runs.
    let body = "CREATE PROCEDURE cgsync.p() BEGIN SELECT 1; SELECT 2; END";
    c.query_drop("SET autocommit = 0").await.expect("autocommit off");
    let err = c.query_drop(format!("UPDATE acct SET bal = 41 WHERE id = 1; {body}")).await.expect_err("refused");
    assert_eq!(error_code(&err), 1235, "{err}");
    assert!(err.to_string().contains("statement 2 of 2") && err.to_string().contains("cgsync.acct"), "{err}");
    let err = c.query_drop(format!("INSERT INTO scratch VALUES (1); {body}; TRUNCATE acct")).await.expect_err("refused");
    assert_eq!(error_code(&err), 1235, "{err}");
    assert!(err.to_string().contains("`TRUNCATE acct`") && err.to_string().contains("DELETE FROM cgsync.acct"), "{err}");
    c.query_drop("ROLLBACK").await.expect("rollback");
    c.query_drop("SET autocommit = 1").await.expect("autocommit on");
    let routines = "SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = 'cgsync'";
    assert_eq!(primary().sql(routines).expect("routines"), "0", "nothing of the queries ran");
    assert_eq!(primary().sql("SELECT COUNT(*) FROM cgsync.scratch").expect("scratch"), "0");
    let (on_primary, on_replica) = both().await;
    assert_eq!(on_primary, "1\t40\ta\n2\t200\tb");
    assert_eq!(on_replica, on_primary);
}

/// The rows on (primary, replica), once the replica has no branch of ours left (XA COMMIT
/// runs after the client's reply).
async fn both() -> (String, String) {
    settled().await;
    (rows(primary()), rows(replica()))
}

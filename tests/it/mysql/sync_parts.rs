//! Multi-statement queries capgate runs in parts, and the session's table locks, on sync
//! tables (issue 15): with autocommit off, `SET autocommit = 1; UPDATE <sync table> …`
//! commits the open transaction and the UPDATE, each coordinated (inside `BEGIN` with
//! autocommit on, nothing commits and a ROLLBACK undoes both); `CREATE TABLE t …; INSERT
//! INTO t …` into a new sync table with autocommit off is captured (the INSERT runs once the
//! table has its triggers) and committed on both sites by the next COMMIT; `BEGIN` releases
//! the session's `LOCK TABLES`, so a TRUNCATE after it is carried rather than refused;
//! partition maintenance that changes a sync table's rows is refused.

use mysql_async::prelude::*;

use super::support::{connect, error_code, primary, replica, MyProxy, APP_PASSWORD};
use super::sync::{rows, settled, setup};

use super::capture::SERVER;

fn proxy(name: &str) -> MyProxy {
    super::sync_relay::proxy_with_policy(
        name,
        "default = \"local\"\n[[table]]\nmatch = \"cgsync.acct\"\nmode = \"sync\"\n[[table]]\nmatch = \"cgsync.fresh\"\nmode = \"sync\"\n",
    )
}

async fn both() -> (String, String) {
    settled().await;
    (rows(primary()), rows(replica()))
}

#[tokio::test(flavor = "multi_thread")]
async fn autocommit_on_then_a_sync_write_in_one_query_with_autocommit_off() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    let p = proxy("mysql-sync-parts-autocommit");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;

    c.query_drop("SET autocommit = 0").await.expect("autocommit off");
    c.query_drop("UPDATE acct SET bal = 101 WHERE id = 1").await.expect("update in the open transaction");
    c.query_drop("SET autocommit = 1; UPDATE acct SET bal = 201 WHERE id = 2")
        .await
        .expect("SET autocommit = 1 and a sync write in one query");
    assert_eq!(c.query_first::<i64, _>("SELECT @@in_transaction").await.expect("read"), Some(0));
    assert_eq!(c.query_first::<i64, _>("SELECT @@autocommit").await.expect("read"), Some(1));
    let (on_primary, on_replica) = both().await;
    assert_eq!(on_primary, "1\t101\ta\n2\t201\tb");
    assert_eq!(on_replica, on_primary, "both writes on both sites");

    // Inside BEGIN with autocommit on, the same query commits nothing (as on the server): the
    // UPDATE joins the open transaction, and ROLLBACK undoes both writes.
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 102 WHERE id = 1").await.expect("update");
    c.query_drop("SET autocommit = 1; UPDATE acct SET bal = 202 WHERE id = 2").await.expect("the same query inside BEGIN");
    assert_eq!(c.query_first::<i64, _>("SELECT @@in_transaction").await.expect("read"), Some(1), "still in the transaction");
    c.query_drop("ROLLBACK").await.expect("rollback");
    let (on_primary, on_replica) = both().await;
    assert_eq!(on_primary, "1\t101\ta\n2\t201\tb", "SET autocommit = 1 inside BEGIN committed the transaction");
    assert_eq!(on_replica, on_primary);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_sync_table_written_in_the_query_that_creates_it_with_autocommit_off() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    // DDL is not carried to MySQL replicas: the replica's table is created as an operator would.
    replica().sql("CREATE TABLE cgsync.fresh (id INT PRIMARY KEY, v INT NOT NULL)").expect("replica table");
    let p = proxy("mysql-sync-parts-create");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;

    c.query_drop("SET autocommit = 0").await.expect("autocommit off");
    c.query_drop("CREATE TABLE fresh (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO fresh VALUES (1, 10), (2, 20)")
        .await
        .expect("CREATE TABLE and INSERT in one query");
    c.query_drop("COMMIT").await.expect("commit");
    settled().await;
    let fresh = "SELECT id, v FROM cgsync.fresh ORDER BY id";
    assert_eq!(primary().sql(fresh).expect("primary"), "1\t10\n2\t20");
    assert_eq!(replica().sql(fresh).expect("replica"), "1\t10\n2\t20", "the INSERT was not captured");
}

#[tokio::test(flavor = "multi_thread")]
async fn begin_releases_table_locks_and_partition_maintenance_is_refused() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    primary().sql("CREATE TABLE cgsync.scratch (a INT)").expect("local table");
    let p = proxy("mysql-sync-parts-locks");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;

    // BEGIN (and START TRANSACTION) releases the locks: a TRUNCATE of a sync table after it
    // is carried, not refused with "UNLOCK TABLES first".
    for begin in ["BEGIN", "START TRANSACTION"] {
        c.query_drop("LOCK TABLES scratch WRITE").await.expect("lock");
        c.query_drop(begin).await.expect(begin);
        c.query_drop("TRUNCATE acct").await.unwrap_or_else(|e| panic!("TRUNCATE after {begin}: {e}"));
        let (on_primary, on_replica) = both().await;
        assert_eq!((on_primary.as_str(), on_replica.as_str()), ("", ""), "after {begin}");
        c.query_drop("INSERT INTO acct VALUES (1, 100, 'a'), (2, 200, 'b')").await.expect("rows back");
    }
    // In one query too.
    c.query_drop("LOCK TABLES scratch WRITE; BEGIN").await.expect("lock and begin");
    c.query_drop("TRUNCATE acct").await.expect("TRUNCATE after LOCK TABLES; BEGIN");
    let (on_primary, on_replica) = both().await;
    assert_eq!((on_primary.as_str(), on_replica.as_str()), ("", ""));
    c.query_drop("INSERT INTO acct VALUES (1, 100, 'a'), (2, 200, 'b')").await.expect("rows back");
    // Still locked: refused, as before.
    c.query_drop("LOCK TABLES scratch WRITE").await.expect("lock");
    let err = c.query_drop("TRUNCATE acct").await.expect_err("TRUNCATE under LOCK TABLES");
    assert!(err.to_string().contains("UNLOCK TABLES first"), "{err}");
    c.query_drop("UNLOCK TABLES").await.expect("unlock");

    // Partition maintenance that changes a sync table's rows: refused before the server.
    let err = c.query_drop("ALTER TABLE acct TRUNCATE PARTITION p0").await.expect_err("TRUNCATE PARTITION");
    assert_eq!(error_code(&err), 1235, "{err}");
    assert!(err.to_string().contains("cgsync.acct is replicated (mode sync, rule cgsync.acct)"), "{err}");
    assert!(err.to_string().contains("use DELETE FROM cgsync.acct PARTITION (p0)"), "{err}");
}

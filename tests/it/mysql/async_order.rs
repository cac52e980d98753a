//! An async batch regrouped by key on the replica (`store::mysql::order`): transactions that
//! each update, delete and re-insert rows of an integer-keyed table reach the replica as a
//! few multi-row statements instead of one statement per change, and arrive exactly; tables
//! bound by a foreign key keep capture order (the child row's insert would otherwise come
//! first, by table name, and fail).

use std::time::{Duration, Instant};

use mysql_async::prelude::*;

use super::async_copy::copied;
use super::async_ship::{converged, link, servers, setup_both, TURN};
use super::support::{connect, MyProxy};

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"orderdb.*\"\nmode = \"async\"\n";

/// The replica's count of DELETE statements (every one is the shipper's: the tests take turns).
fn replica_deletes() -> u64 {
    let sql = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'COM_DELETE'";
    servers().1.sql(sql).expect("replica status").trim().parse().expect("a count")
}

#[tokio::test(flavor = "multi_thread")]
async fn interleaved_transactions_arrive_as_merged_statements_and_foreign_keys_keep_their_order() {
    let _turn = TURN.lock().await;
    setup_both(
        "DROP DATABASE IF EXISTS orderdb; CREATE DATABASE orderdb; \
         CREATE TABLE orderdb.f (id INT PRIMARY KEY, v INT); \
         CREATE TABLE orderdb.z_parent (id INT PRIMARY KEY); \
         CREATE TABLE orderdb.a_child (id INT PRIMARY KEY, parent INT NOT NULL, FOREIGN KEY (parent) REFERENCES orderdb.z_parent (id)); \
         INSERT INTO orderdb.f SELECT seq, 0 FROM orderdb.seq_1_to_40",
    );
    let link = link();
    let dir = crate::support::scratch("mysql-async-order");
    std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");
    let conflicts = dir.join("conflicts.jsonl");
    // One batch a second: the transactions below share a batch or two.
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\nconflict_log = \"{}\"\n\
         [primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@{}/?sslmode=disable\"\nship_interval = \"1s\"\n",
        conflicts.display(),
        servers().0.port(),
        link.addr()
    );
    let p = MyProxy::start_config(&text, &dir);
    for table in ["orderdb.f", "orderdb.z_parent", "orderdb.a_child"] {
        copied(&p, table).await;
    }
    let mut c = connect(&p.url("capgate", None, "orderdb")).await;
    let before = replica_deletes();

    // Each transaction as sysbench's: an update, a delete and the insert of the deleted id;
    // then a parent row and its child.
    for i in 1..=20 {
        let steps = [
            "START TRANSACTION".to_owned(),
            format!("UPDATE f SET v = v + 1 WHERE id = {i}"),
            format!("DELETE FROM f WHERE id = {}", 20 + i),
            format!("INSERT INTO f VALUES ({}, {i})", 20 + i),
            format!("INSERT INTO z_parent VALUES ({i})"),
            format!("INSERT INTO a_child VALUES ({i}, {i})"),
            "COMMIT".to_owned(),
        ];
        for sql in steps {
            c.query_drop(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
    let sums = "SELECT (SELECT CONCAT(COUNT(*), ' ', SUM(v)) FROM orderdb.f), (SELECT COUNT(*) FROM orderdb.a_child)";
    assert_eq!(converged(sums).await, "40 230\t20");
    assert_eq!(converged("SELECT id, v FROM orderdb.f ORDER BY id").await.lines().count(), 40);
    // The 20 deletes went in one merged DELETE per batch (one batch a second; in capture
    // order each would have been a statement of its own, between the updates and inserts).
    let deletes = replica_deletes() - before;
    assert!((1..=5).contains(&deletes), "{deletes} DELETE statements on the replica for 20 deleted rows");
    // Applied on the fast path: no conflict was met (the change-by-change path logs them).
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        let logged = std::fs::read_to_string(&conflicts).unwrap_or_default();
        assert!(logged.is_empty(), "{logged}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

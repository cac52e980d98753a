//! Partition maintenance and DDL followed by writes on an async table (issue 15), on the
//! async tests' own primary and replica.
//!
//! `ALTER TABLE t TRUNCATE PARTITION p` (and DROP, EXCHANGE, CONVERT PARTITION) changes rows
//! without firing a trigger: through capgate it is refused with 1235 naming the table, its
//! policy and the remedy — as text, prepared with COM_STMT_PREPARE and inside an SQL `PREPARE
//! … FROM '…'`, where a plain TRUNCATE is refused too — and the primary keeps its rows; the remedy, `DELETE FROM t PARTITION (p)`,
//! reaches the replica; a `REORGANIZE PARTITION` keeps the rows and goes through. In one query,
//! `ALTER TABLE t ADD COLUMN c …; UPDATE t SET c = …` carries the new column: the UPDATE runs
//! once the capture triggers follow the ALTER, and the shipper, which read the replica's
//! columns before the operator added `c` there, reads them again instead of halting the table.

use mysql_async::prelude::*;

use super::async_copy::copied;
use super::async_ship::{converged, link, proxy, servers, setup_both, TURN};
use super::support::{connect, error_code};

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"partdb.*\"\nmode = \"async\"\n";

const ROWS: &str = "SELECT id, v FROM partdb.t ORDER BY id";

#[tokio::test(flavor = "multi_thread")]
async fn partition_maintenance_that_changes_rows_is_refused_and_its_remedy_is_carried() {
    let _turn = TURN.lock().await;
    setup_both(
        "DROP DATABASE IF EXISTS partdb; CREATE DATABASE partdb; \
         CREATE TABLE partdb.t (id INT PRIMARY KEY, v INT NOT NULL) PARTITION BY RANGE (id) \
         (PARTITION p0 VALUES LESS THAN (100), PARTITION p1 VALUES LESS THAN (200), PARTITION p2 VALUES LESS THAN MAXVALUE); \
         CREATE TABLE partdb.x (id INT PRIMARY KEY, v INT NOT NULL)",
    );
    let (primary, _) = servers();
    let link = link();
    let (p, _) = proxy("mysql-partitions", POLICY, &link);
    copied(&p, "partdb.t").await;
    let mut c = connect(&p.url("capgate", None, "partdb")).await;
    for id in (10..300).step_by(10) {
        c.exec_drop("INSERT INTO t VALUES (?, ?)", (id, id)).await.expect("insert");
    }
    let all = converged(ROWS).await;
    assert_eq!(all.lines().count(), 29);

    // Refused, whatever the spelling; nothing ran on the primary.
    for sql in [
        "ALTER TABLE t TRUNCATE PARTITION p0",
        "alter table partdb.t drop partition p2",
        "ALTER TABLE t EXCHANGE PARTITION p1 WITH TABLE x",
        "SELECT 1; ALTER TABLE `t` TRUNCATE PARTITION ALL",
        "PREPARE s FROM 'ALTER TABLE t TRUNCATE PARTITION p0'",
    ] {
        let err = c.query_drop(sql).await.expect_err(sql);
        assert_eq!(error_code(&err), 1235, "{sql}: {err}");
        for words in ["partdb.t is replicated (mode async, rule partdb.*)", "nothing was run", "DELETE FROM partdb.t PARTITION ("] {
            assert!(err.to_string().contains(words), "{sql}: {words:?} missing from: {err}");
        }
    }
    // A TRUNCATE its EXECUTE would run unseen: refused too (one sent alone is carried).
    let err = c.query_drop("PREPARE s FROM 'TRUNCATE TABLE t'").await.expect_err("SQL PREPARE of a TRUNCATE");
    assert_eq!(error_code(&err), 1235, "{err}");
    assert!(err.to_string().contains("cannot see one run by EXECUTE"), "{err}");
    let err = c.prep("ALTER TABLE t TRUNCATE PARTITION p0").await.expect_err("a prepared TRUNCATE PARTITION");
    assert_eq!(error_code(&err), 1235, "{err}");
    assert_eq!(primary.sql(ROWS).expect("primary"), all, "the primary kept its rows");

    // The remedy fires the capture triggers: both sites lose the partition's rows.
    c.query_drop("DELETE FROM t PARTITION (p0)").await.expect("DELETE … PARTITION");
    assert_eq!(c.affected_rows(), 9);
    let left = converged(ROWS).await;
    assert_eq!(left.lines().count(), 20, "{left}");
    assert!(left.lines().all(|l| l.split('\t').next().and_then(|id| id.parse::<u32>().ok()).is_some_and(|id| id >= 100)), "{left}");

    // Maintenance that keeps the rows goes through (DDL is not carried to MySQL replicas:
    // the replica keeps its own layout, and the rows stay equal).
    c.query_drop(
        "ALTER TABLE t REORGANIZE PARTITION p2 INTO (PARTITION p2 VALUES LESS THAN (250), PARTITION p3 VALUES LESS THAN MAXVALUE)",
    )
    .await
    .expect("REORGANIZE PARTITION");
    c.query_drop("UPDATE t SET v = v + 1 WHERE id >= 240").await.expect("update");
    assert_eq!(converged(ROWS).await.lines().count(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_after_an_alter_table_in_the_same_query_carry_the_new_column() {
    let _turn = TURN.lock().await;
    setup_both(
        "DROP DATABASE IF EXISTS partdb; CREATE DATABASE partdb; \
         CREATE TABLE partdb.t (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO partdb.t VALUES (1, 1), (2, 2)",
    );
    let link = link();
    let (p, _) = proxy("mysql-alter-then-write", POLICY, &link);
    copied(&p, "partdb.t").await;
    let mut c = connect(&p.url("capgate", None, "partdb")).await;
    c.query_drop("UPDATE t SET v = 10 WHERE id = 1").await.expect("update");
    converged("SELECT id, v FROM partdb.t ORDER BY id").await;
    // DDL is not carried to MySQL replicas: the operator adds the column on the replica
    // first, while capgate ships (the shipper reads the replica's columns again when a
    // change names one it has not seen, rather than halting the table).
    servers().1.sql("ALTER TABLE partdb.t ADD COLUMN c INT NOT NULL DEFAULT 0").expect("replica column");
    c.query_drop("ALTER TABLE t ADD COLUMN c INT NOT NULL DEFAULT 0; UPDATE t SET c = id * 10; INSERT INTO t VALUES (3, 3, 30)")
        .await
        .expect("ALTER, UPDATE and INSERT in one query");
    assert_eq!(converged("SELECT id, v, c FROM partdb.t ORDER BY id").await, "1\t10\t10\n2\t2\t20\n3\t3\t30");
}

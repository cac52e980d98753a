//! DDL of an async table through capgate (decision 0040), on the async tests' own primary
//! and replica: `ALTER TABLE` (add, modify, drop a column), `CREATE INDEX` and `DROP INDEX`
//! reach the replica in order with the rows written before and after them — rows in the
//! new shape included, while other sessions write the table through capgate and around it
//! — and the table's definition ends up the same on both sites; a replayed statement (the
//! replica's position could not move after it ran, and capgate was restarted) is recognised
//! as done, not run twice; what capgate does not carry is refused with the table, its mode
//! and rule, and the remedy, nothing run; inside a multi-statement query the statement runs
//! as a part of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;

use super::async_copy::copied;
use super::async_ship::{converged, link, proxy, servers, setup_both, TURN};
use super::support::{connect, error_code, url_at, MyProxy};

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"ddldb.*\"\nmode = \"async\"\n";

const TABLES: &str = "DROP DATABASE IF EXISTS ddldb; CREATE DATABASE ddldb; \
    CREATE TABLE ddldb.t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)";

/// The table's definition as a DBA compares it (without the AUTO_INCREMENT counter).
const DEFINITION: &str = "SELECT GROUP_CONCAT(CONCAT_WS(' ', COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, IFNULL(COLUMN_DEFAULT, '-')) \
    ORDER BY ORDINAL_POSITION SEPARATOR ', ') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'ddldb' AND TABLE_NAME = 't'";
const INDEXES: &str = "SELECT IFNULL(GROUP_CONCAT(DISTINCT INDEX_NAME ORDER BY INDEX_NAME), '') FROM information_schema.STATISTICS \
    WHERE TABLE_SCHEMA = 'ddldb' AND TABLE_NAME = 't'";

/// The shipper's conflicts so far, and whether `ddldb.t` is halted.
fn conflicts_and_halt(p: &MyProxy) -> (u64, bool) {
    let fleet = p.shared.shipping.get().cloned().expect("shipping");
    let stats = fleet.shippers["east"].stats().clone();
    let halted = stats.tables().get("ddldb.t").is_some_and(|s| s.state == capgate::replicate::shipper::TableState::Halted);
    (stats.conflicts.load(Ordering::Relaxed), halted)
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_reaches_the_replica_in_order_with_the_rows() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let (primary, _) = servers();
    let link = link();
    let (p, _) = proxy("mysql-ddl", POLICY, &link);
    copied(&p, "ddldb.t").await;
    let mut c = connect(&p.url("capgate", None, "ddldb")).await;
    c.query_drop("INSERT INTO t VALUES (1, 'one'), (2, 'two')").await.expect("insert");

    // Before this decision the replica's table kept its shape: the first row with `c`
    // halted the table (conflict missing_column) and every later change of it was held.
    c.query_drop("ALTER TABLE t ADD COLUMN c INT DEFAULT 7").await.expect("ALTER TABLE through capgate");
    c.query_drop("INSERT INTO t VALUES (3, 'three', 30)").await.expect("insert with c");
    c.query_drop("UPDATE t SET c = 10 WHERE id = 1").await.expect("update c");
    c.query_drop("INSERT INTO t (id, v) VALUES (4, 'four')").await.expect("insert without c");
    c.query_drop("CREATE INDEX by_c ON t (c)").await.expect("CREATE INDEX");
    c.query_drop("ALTER TABLE t MODIFY v VARCHAR(40) NOT NULL, ADD COLUMN note TEXT NULL").await.expect("modify");
    c.query_drop("UPDATE t SET v = 'a value longer than twenty', note = 'n' WHERE id = 2").await.expect("long value");
    c.query_drop("DROP INDEX by_c ON t").await.expect("DROP INDEX");
    c.query_drop("ALTER TABLE t DROP COLUMN note").await.expect("drop a column");
    c.query_drop("INSERT INTO t VALUES (5, 'five', 50)").await.expect("insert after the drop");

    // (Compared whole first: until the replica has `c`, a query naming it fails there.)
    converged("SELECT * FROM ddldb.t ORDER BY id").await;
    let rows = "SELECT id, v, IFNULL(c, 'NULL') FROM ddldb.t ORDER BY id";
    let got = converged(rows).await;
    assert_eq!(got, "1\tone\t10\n2\ta value longer than twenty\t7\n3\tthree\t30\n4\tfour\t7\n5\tfive\t50");
    assert_eq!(converged(DEFINITION).await, primary.sql(DEFINITION).expect("primary"));
    assert_eq!(converged(INDEXES).await, "PRIMARY");
    assert_eq!(conflicts_and_halt(&p), (0, false), "no conflict, the table not halted");

    // While other sessions write the table, through capgate and around it: each of their
    // rows is captured in the shape it was written in and applied on the right side of the
    // statement.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = [(p.port(), 100_000u64), (primary.port(), 200_000)]
        .into_iter()
        .map(|(port, base)| tokio::spawn(writer(port, base, stop.clone(), done.clone())))
        .collect();
    let some_more = || async {
        let before = done.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::Relaxed) < before + 20 {
            assert!(Instant::now() < deadline, "the writers stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    for n in 0..4 {
        some_more().await;
        c.query_drop(format!("ALTER TABLE t ADD COLUMN x{n} INT NOT NULL DEFAULT {n}")).await.expect("add under writers");
        some_more().await;
        c.query_drop(format!("UPDATE t SET x{n} = 100 + {n} WHERE id = 1")).await.expect("update the new column");
    }
    some_more().await;
    c.query_drop("ALTER TABLE t DROP COLUMN x0").await.expect("drop under writers");
    some_more().await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let all = "SELECT * FROM ddldb.t ORDER BY id";
    let got = converged(all).await;
    assert!(got.starts_with("1\tone\t10\t101\t102\t103\n"), "{got:.200}");
    assert_eq!(converged(DEFINITION).await, primary.sql(DEFINITION).expect("primary"));
    assert_eq!(conflicts_and_halt(&p), (0, false), "no conflict, the table not halted");
}

/// Inserts rows (keys from `base`, the columns every shape has) into `ddldb.t`, one
/// autocommit statement at a time, until `stop`; counts them in `done`. A write in the
/// instant between a DROP COLUMN and the capture triggers' replacement fails (1054, the old
/// trigger names the column; nothing written) and is retried, as an application would.
async fn writer(port: u16, base: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> u64 {
    let mut c = connect(&url_at(port, "capgate", None, "ddldb")).await;
    let mut k = base;
    let mut retried = 0;
    let mut run = async |c: &mut mysql_async::Conn, sql: String| loop {
        match c.query_drop(&sql).await {
            Ok(()) => return,
            Err(e) if error_code(&e) == 1054 => retried += 1,
            Err(e) => panic!("{sql}: {e}"),
        }
    };
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        run(&mut c, format!("INSERT INTO t (id, v) VALUES ({k}, 'w{k}')")).await;
        if k % 3 == 0 {
            run(&mut c, format!("UPDATE t SET v = 'u{k}' WHERE id = {}", k - 1)).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    retried
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_ddl_statement_is_recognised_as_done() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let (primary, replica) = servers();
    // The replica's table has an index of its own (for its reports): its shape is never the
    // primary's, so only the step's record can tell that the statement ran.
    replica.sql("CREATE INDEX replica_only ON ddldb.t (v)").expect("replica's own index");
    let link = link();
    let (p, _) = proxy("mysql-ddl-replay", POLICY, &link);
    copied(&p, "ddldb.t").await;
    let mut c = connect(&p.url("capgate", None, "ddldb")).await;
    c.query_drop("INSERT INTO t VALUES (1, 'one')").await.expect("insert");
    converged("SELECT * FROM ddldb.t").await;

    // The replica refuses to move the position once the column is there: the statement ran,
    // its position record did not.
    let mut r = connect(&url_at(replica.port(), "capgate", None, "")).await;
    r.query_drop(
        "CREATE TRIGGER capgate.test_stuck BEFORE UPDATE ON capgate.applied FOR EACH ROW \
             IF EXISTS (SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'ddldb' AND TABLE_NAME = 't' \
             AND COLUMN_NAME = 'late') THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'test: the position does not move'; END IF",
    )
    .await
    .expect("trigger");
    c.query_drop("ALTER TABLE t ADD COLUMN late INT NOT NULL DEFAULT 1").await.expect("ALTER TABLE");
    c.query_drop("INSERT INTO t VALUES (2, 'two', 2)").await.expect("insert");
    let fleet = p.shared.shipping.get().cloned().expect("shipping");
    let stats = fleet.shippers["east"].stats().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.retries.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "the position never failed to move: {:?}", stats.last_error.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = stats.last_error.lock().unwrap().clone().unwrap_or_default();
    assert!(error.contains("the position does not move"), "{error}");
    drop((c, fleet, stats));
    // capgate restarted; the replica lets the position move again.
    drop(p);
    link.reset();
    r.query_drop("DROP TRIGGER capgate.test_stuck").await.expect("drop the trigger");
    let (p, _) = proxy("mysql-ddl-replay-restarted", POLICY, &link);
    let rows = "SELECT id, v, late FROM ddldb.t ORDER BY id";
    assert_eq!(converged(rows).await, "1\tone\t1\n2\ttwo\t2");
    assert_eq!(replica.sql("SELECT COUNT(*) FROM capgate.ddl_steps").expect("steps"), "0", "the step's record went with the position");
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.shared.shipping.get().is_none() {
        assert!(Instant::now() < deadline, "no shipping");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(conflicts_and_halt(&p), (0, false), "run once: no duplicate column, the table not halted");
    assert!(primary.sql(DEFINITION).expect("primary").contains("late int(11) NO 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_capgate_does_not_carry_is_refused_and_nothing_runs() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let (primary, _) = servers();
    let link = link();
    let (p, _) = proxy("mysql-ddl-refused", POLICY, &link);
    copied(&p, "ddldb.t").await;
    let mut c = connect(&p.url("capgate", None, "ddldb")).await;
    let before = primary.sql(DEFINITION).expect("primary");
    for (sql, words) in [
        ("RENAME TABLE t TO t2", &["ddldb.t", "mode async", "rename", "\"local\""][..]),
        ("ALTER TABLE t RENAME TO t2", &["ddldb.t", "rename"][..]),
    ] {
        let err = c.query_drop(sql).await.expect_err(sql);
        assert_eq!(error_code(&err), 1235, "{sql}: {err}");
        for w in words {
            assert!(err.to_string().contains(w), "{w:?} missing from: {err}");
        }
    }
    let err = c.prep("ALTER TABLE t ADD COLUMN c INT").await.expect_err("prepared");
    assert!(err.to_string().contains("not prepared"), "{err}");
    let err = c.query_drop("PREPARE s FROM 'ALTER TABLE t ADD COLUMN c INT'").await.expect_err("SQL PREPARE");
    assert!(err.to_string().contains("not prepared") && err.to_string().contains("SQL PREPARE"), "{err}");
    c.query_drop("LOCK TABLES t WRITE").await.expect("lock");
    let err = c.query_drop("ALTER TABLE t ADD COLUMN c INT").await.expect_err("under LOCK TABLES");
    assert!(err.to_string().contains("UNLOCK TABLES first"), "{err}");
    c.query_drop("UNLOCK TABLES").await.expect("unlock");
    assert_eq!(primary.sql(DEFINITION).expect("primary"), before, "nothing ran");
    assert_eq!(primary.sql("SHOW TABLES FROM ddldb").expect("tables"), "t");

    // Inside a multi-statement query the statement runs as a part of its own, carried; the
    // writes after it are captured in the new shape.
    c.query_drop("INSERT INTO t VALUES (8, 'eight'); ALTER TABLE t ADD COLUMN c INT DEFAULT 7; INSERT INTO t VALUES (9, 'nine', 9)")
        .await
        .expect("a query in parts");
    assert_eq!(converged("SELECT * FROM ddldb.t ORDER BY id").await, "8\teight\t7\n9\tnine\t9");
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_of_a_halted_table_is_held_with_its_changes_and_run_in_order_on_resume() {
    let _turn = TURN.lock().await;
    setup_both(TABLES);
    let (_, replica) = servers();
    let link = link();
    let (p, _) = proxy("mysql-ddl-halted", POLICY, &link);
    copied(&p, "ddldb.t").await;
    let mut c = connect(&p.url("capgate", None, "ddldb")).await;
    c.query_drop("INSERT INTO t VALUES (1, 'one'), (2, 'two')").await.expect("insert");
    converged("SELECT * FROM ddldb.t ORDER BY id").await;

    // A row gone on the replica: the update halts the table; the ALTER and the rows in the
    // new shape after it are held with it on the primary.
    replica.sql("DELETE FROM ddldb.t WHERE id = 1").expect("replica edit");
    c.query_drop("UPDATE t SET v = 'uno' WHERE id = 1").await.expect("update");
    super::async_ship::halted_in_status(p.admin.expect("admin listener"), "ddldb.t").await;
    c.query_drop("INSERT INTO t VALUES (3, 'three')").await.expect("insert before");
    c.query_drop("ALTER TABLE t ADD COLUMN c INT NOT NULL DEFAULT 7").await.expect("ALTER of a halted table");
    c.query_drop("INSERT INTO t VALUES (4, 'four', 40)").await.expect("insert after");
    c.query_drop("ALTER TABLE t DROP COLUMN v").await.expect("second ALTER");
    c.query_drop("UPDATE t SET c = 20 WHERE id = 2").await.expect("update after");
    assert_eq!(replica.sql("SELECT * FROM ddldb.t ORDER BY id").expect("replica"), "2\ttwo", "held");

    // Repaired and resumed: the rows, each statement and the rows after it, in order.
    replica.sql("INSERT INTO ddldb.t VALUES (1, 'one')").expect("repair");
    let fleet = p.shared.shipping.get().cloned().expect("shipping");
    fleet.shippers["east"].resume("ddldb.t", Duration::from_secs(30)).await.expect("resume");
    assert_eq!(converged("SELECT * FROM ddldb.t ORDER BY id").await, "1\t7\n2\t20\n3\t7\n4\t40");
    assert!(!conflicts_and_halt(&p).1, "resumed");
}

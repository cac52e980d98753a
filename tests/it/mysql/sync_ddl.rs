//! DDL of a sync table through capgate (decision 0040): every replica has run it when the
//! client gets the reply, so sync commits that write the new column go through at once and
//! both sites stay equal (before, every commit of the table was refused with CGC01
//! `missing_column` until an operator altered the replica by hand); the change log's copy of
//! the statement reaches the replica too and is recognised as done there; during a partition
//! the statement is refused, naming the replica, and nothing runs. A statement a replica
//! missed (a report there held the table past the wait) reaches it once the report ends —
//! also with sync rules only, where no shipper runs — and before any later statement of the
//! table, which neither skips it nor overtakes it there. A session in a named time zone the
//! replica has not loaded gets its statement run there at the zone's offset.

use std::time::{Duration, Instant};

use capgate::sites::State;
use mysql_async::prelude::*;

use super::capture::SERVER;
use super::support::{connect, error_code, primary, replica, APP_PASSWORD};
use super::sync::{settled, setup};
use super::sync_faults::sync_proxy_behind_link;
use super::sync_relay::proxy;

const ROWS: &str = "SELECT id, bal, IFNULL(note, 'NULL'), IFNULL(c, 'NULL') FROM cgsync.acct ORDER BY id";
const DEFINITION: &str = "SELECT GROUP_CONCAT(CONCAT_WS(' ', COLUMN_NAME, COLUMN_TYPE, IFNULL(COLUMN_DEFAULT, '-')) ORDER BY ORDINAL_POSITION \
    SEPARATOR ', '), (SELECT IFNULL(GROUP_CONCAT(DISTINCT INDEX_NAME ORDER BY INDEX_NAME), '') FROM information_schema.STATISTICS \
    WHERE TABLE_SCHEMA = 'cgsync' AND TABLE_NAME = 'acct') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'cgsync' AND TABLE_NAME = 'acct'";

/// The replica's step records of earlier tests' statements (a capgate whose policy has no
/// async rule runs no shipper, which would move past them; and the shared primary's change
/// log numbers may start again): gone.
fn forget_steps() {
    replica().sql(&format!("{}; DELETE FROM capgate.ddl_steps", capgate::store::mysql::ddl::STEPS_TABLE)).expect("forget steps");
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_of_a_sync_table_runs_on_every_replica_before_the_reply() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    forget_steps();
    let p = proxy("mysql-sync-ddl");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    c.query_drop("ALTER TABLE acct ADD COLUMN c INT DEFAULT 7").await.expect("ALTER TABLE of a sync table");
    assert_eq!(replica().sql(DEFINITION).expect("replica"), primary().sql(DEFINITION).expect("primary"), "on the replica at the reply");
    c.query_drop("INSERT INTO acct VALUES (3, 300, 'c', 30)").await.expect("insert with c");
    c.query_drop("UPDATE acct SET c = 10 WHERE id = 1").await.expect("update c");
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("INSERT INTO acct (id, bal) VALUES (4, 400)").await.expect("insert without c");
    // The open transaction commits (coordinated) before the DDL, as the server would.
    c.query_drop("CREATE INDEX by_c ON acct (c)").await.expect("CREATE INDEX");
    c.query_drop("ALTER TABLE acct MODIFY note VARCHAR(40)").await.expect("modify");
    c.query_drop("UPDATE acct SET note = 'a note longer than twenty' WHERE id = 2").await.expect("long note");
    c.query_drop("DROP INDEX by_c ON acct").await.expect("DROP INDEX");
    settled().await;
    let rows = primary().sql(ROWS).expect("primary");
    assert_eq!(rows, "1\t100\ta\t10\n2\t200\ta note longer than twenty\t7\n3\t300\tc\t30\n4\t400\tNULL\t7");
    assert_eq!(replica().sql(ROWS).expect("replica"), rows);
    assert_eq!(replica().sql(DEFINITION).expect("replica"), primary().sql(DEFINITION).expect("primary"));

    // The change log's copy of each statement reaches the replica in order and is found done
    // there: the shipper moves past it (its step record goes) without running it again.
    let fleet = p.shared.shipping.get().cloned().expect("shipping");
    let stats = fleet.shippers["east"].stats().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let steps = "SELECT COUNT(*) FROM capgate.ddl_steps";
    while replica().sql(steps).expect("steps") != "0" {
        assert!(
            Instant::now() < deadline,
            "the shipper never moved past the statements: {:?} {:?} {:?} {}",
            stats.last_error.lock().unwrap(),
            stats.tables(),
            stats.applied_snapshot.lock().unwrap(),
            primary().sql("SELECT seq, tbl, op FROM capgate.changes").unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats.conflicts.load(std::sync::atomic::Ordering::Relaxed), 0, "{:?}", stats.tables());
    assert_eq!(replica().sql(DEFINITION).expect("replica"), primary().sql(DEFINITION).expect("primary"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_of_a_sync_table_is_refused_while_a_replica_is_cut_off() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    forget_steps();
    let (link, p) = sync_proxy_behind_link("mysql-sync-ddl-cut");
    let east = p.shared.sites.get("east").expect("replica east is watched");
    east.health().wait_state(State::Healthy, Duration::from_secs(30)).await.expect("east healthy");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    let before = primary().sql(DEFINITION).expect("primary");
    link.refuse(true);
    link.reset();
    east.health().wait_state(State::Partitioned, Duration::from_secs(30)).await.expect("east partitioned");
    let err = c.query_drop("ALTER TABLE acct ADD COLUMN c INT DEFAULT 7").await.expect_err("refused during the partition");
    assert_eq!(error_code(&err), 1644, "{err}");
    for words in ["cgsync.acct", "sync", "replica \"east\"", "nothing was run", "Retry once the replica is healthy"] {
        assert!(err.to_string().contains(words), "{words:?} missing from: {err}");
    }
    assert_eq!(primary().sql(DEFINITION).expect("primary"), before, "nothing ran on the primary");
    link.refuse(false);
    east.health().wait_state(State::Healthy, Duration::from_secs(30)).await.expect("east healthy again");
    c.query_drop("ALTER TABLE acct ADD COLUMN c INT DEFAULT 7").await.expect("after the heal");
    c.query_drop("UPDATE acct SET c = 1 WHERE id = 1").await.expect("write the new column");
    settled().await;
    assert_eq!(replica().sql(ROWS).expect("replica"), primary().sql(ROWS).expect("primary"));
}

/// Waits (bounded) until the shipper has moved past every carried statement (the replica's
/// step records gone); panics with the shipper's state if it never does.
async fn steps_passed(p: &super::support::MyProxy) {
    let fleet = p.shared.shipping.get().cloned().expect("shipping");
    let stats = fleet.shippers["east"].stats().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica().sql("SELECT COUNT(*) FROM capgate.ddl_steps").expect("steps") != "0" {
        assert!(
            Instant::now() < deadline,
            "the shipper never moved past the statements: {:?} {:?}",
            stats.last_error.lock().unwrap(),
            stats.tables()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats.conflicts.load(std::sync::atomic::Ordering::Relaxed), 0, "{:?}", stats.tables());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_tables_constraint_runs_once_on_the_replica() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    forget_steps();
    let p = proxy("mysql-sync-ddl-check");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    // A CHECK constraint changes no column or index: the replica's shape cannot tell that
    // the statement ran there before the reply.
    c.query_drop("ALTER TABLE acct ADD CONSTRAINT bal_positive CHECK (bal >= 0)").await.expect("ADD CONSTRAINT");
    steps_passed(&p).await;
    c.query_drop("UPDATE acct SET bal = 5 WHERE id = 1").await.expect("a sync write after");
    settled().await;
    assert_eq!(replica().sql(ROWS_BEFORE).expect("replica"), primary().sql(ROWS_BEFORE).expect("primary"));
}

const ROWS_BEFORE: &str = "SELECT id, bal, IFNULL(note, 'NULL') FROM cgsync.acct ORDER BY id";

/// A sync table's `ALTER TABLE acct ADD COLUMN c` the replica missed: a report on the replica
/// held the table's metadata lock until the step timed out (the report has ended since), and
/// the shipper waits behind `holder`'s row of the async table `notes` (open until the caller
/// rolls it back). Returns capgate, the client's session and the holder.
async fn missed_step(name: &str) -> (super::support::MyProxy, mysql_async::Conn, mysql_async::Conn) {
    let _ = setup().await;
    forget_steps();
    for site in [primary(), replica()] {
        site.sql("CREATE TABLE cgsync.notes (id INT PRIMARY KEY, body TEXT)").expect("notes");
    }
    let p = proxy(name);
    super::async_copy::copied(&p, "cgsync.notes").await;
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    // On the replica a report reads the sync table in a long transaction (its metadata lock
    // held), and another one holds a row of the async table, so the shipper waits behind it.
    let mut report = connect(&super::support::url_at(replica().port(), "capgate", None, "cgsync")).await;
    report.query_drop("BEGIN").await.expect("begin");
    report.query_drop("SELECT * FROM acct").await.expect("read");
    let mut holder = connect(&super::support::url_at(replica().port(), "capgate", None, "cgsync")).await;
    holder.query_drop("BEGIN").await.expect("begin");
    holder.query_drop("INSERT INTO notes VALUES (1, 'replica')").await.expect("hold a row");
    c.query_drop("INSERT INTO notes VALUES (1, 'primary')").await.expect("an async write");
    // The replica cannot take the statement (its lock wait times out): the client is told
    // it follows from the change log.
    let err = c.query_drop("ALTER TABLE acct ADD COLUMN c INT DEFAULT 7").await.expect_err("the replica missed it");
    assert!(err.to_string().contains("from the change log"), "{err}");
    report.query_drop("COMMIT").await.expect("the report ends");
    (p, c, holder)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_a_replica_missed_is_not_skipped_when_a_later_one_reaches_it() {
    let _turn = SERVER.lock().await;
    let (p, mut c, mut holder) = missed_step("mysql-sync-ddl-missed").await;
    // A later statement reaches the replica before the shipper has carried the first.
    c.query_drop("CREATE INDEX by_bal ON acct (bal)").await.expect("CREATE INDEX");
    holder.query_drop("ROLLBACK").await.expect("the holder ends");
    steps_passed(&p).await;
    assert_eq!(replica().sql(DEFINITION).expect("replica"), primary().sql(DEFINITION).expect("primary"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_statement_runs_on_the_replica_after_the_one_it_missed() {
    let _turn = SERVER.lock().await;
    let (p, mut c, mut holder) = missed_step("mysql-sync-ddl-missed-order").await;
    // A later statement of the table, while the shipper has not carried the first: it runs
    // on the replica after the first (run in the other order, the columns' order differs).
    c.query_drop("ALTER TABLE acct ADD COLUMN d INT DEFAULT 8").await.expect("the later ALTER");
    holder.query_drop("ROLLBACK").await.expect("the holder ends");
    assert_eq!(replica().sql(DEFINITION).expect("replica"), primary().sql(DEFINITION).expect("primary"), "at the reply");
    steps_passed(&p).await;
    assert_eq!(replica().sql(DEFINITION).expect("replica"), primary().sql(DEFINITION).expect("primary"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_a_replica_missed_reaches_it_without_an_async_rule() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    forget_steps();
    let p = super::sync_relay::proxy_with_policy(
        "mysql-sync-ddl-missed-sync-only",
        "default = \"local\"\n[[table]]\nmatch = \"cgsync.acct\"\nmode = \"sync\"\n",
    );
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    let mut report = connect(&super::support::url_at(replica().port(), "capgate", None, "cgsync")).await;
    report.query_drop("BEGIN").await.expect("begin");
    report.query_drop("SELECT * FROM acct").await.expect("read");
    let err = c.query_drop("ALTER TABLE acct ADD COLUMN c INT DEFAULT 7").await.expect_err("the replica missed it");
    assert!(err.to_string().contains("from the change log"), "{err}");
    report.query_drop("COMMIT").await.expect("the report ends");
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica().sql(DEFINITION).expect("replica") != primary().sql(DEFINITION).expect("primary") {
        assert!(Instant::now() < deadline, "the statement never reached the replica: {}", replica().sql(DEFINITION).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.query_drop("UPDATE acct SET bal = 1 WHERE id = 1").await.expect("a sync write after");
}

const SYNC_ONLY: &str = "default = \"local\"\n[[table]]\nmatch = \"cgsync.acct\"\nmode = \"sync\"\n";

/// A client session in a named time zone the replica has not loaded (its `mysql.time_zone*`
/// tables hold only what the operator loaded there): the statement still runs on the replica,
/// at the zone's offset, and the values it fills in are the primary's.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_from_a_session_in_a_zone_the_replica_lacks_runs_there() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    forget_steps();
    // A zone on the primary only: five hours east, no transitions.
    primary()
        .sql(
            "DELETE FROM mysql.time_zone_name WHERE Name = 'Capgate/East'; DELETE FROM mysql.time_zone WHERE Time_zone_id = 9001; \
             DELETE FROM mysql.time_zone_transition_type WHERE Time_zone_id = 9001; \
             INSERT INTO mysql.time_zone (Time_zone_id, Use_leap_seconds) VALUES (9001, 'N'); \
             INSERT INTO mysql.time_zone_name (Name, Time_zone_id) VALUES ('Capgate/East', 9001); \
             INSERT INTO mysql.time_zone_transition_type (Time_zone_id, Transition_type_id, `Offset`, Is_DST, Abbreviation) \
             VALUES (9001, 0, 18000, 0, 'CGE')",
        )
        .expect("a named zone on the primary");
    let p = super::sync_relay::proxy_with_policy("mysql-sync-ddl-named-zone", SYNC_ONLY);
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    c.query_drop("SET time_zone = 'Capgate/East'").await.expect("the session's zone");
    let now: Option<String> = c.query_first("SELECT TIMEDIFF(NOW(), UTC_TIMESTAMP())").await.expect("offset");
    assert_eq!(now.as_deref(), Some("05:00:00"), "the zone loaded on the primary");
    c.query_drop("ALTER TABLE acct ADD COLUMN at TIMESTAMP NOT NULL DEFAULT '2026-01-01 00:00:00'").await.expect("ALTER TABLE");
    assert_eq!(replica().sql(DEFINITION).expect("replica"), primary().sql(DEFINITION).expect("primary"), "at the reply");
    let stamps = "SELECT id, UNIX_TIMESTAMP(at) FROM cgsync.acct ORDER BY id";
    assert_eq!(replica().sql(stamps).expect("replica"), primary().sql(stamps).expect("primary"), "the filled-in values");
    c.query_drop("UPDATE acct SET bal = 1 WHERE id = 1").await.expect("a sync write after");
}

/// With sync rules only and nothing missed, the maintenance round writes nothing on the
/// replica: no `CREATE TABLE` there every few seconds (each would be logged in the replica's
/// binary log).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_round_writes_nothing_on_the_replica() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    forget_steps();
    let p = super::sync_relay::proxy_with_policy("mysql-sync-ddl-idle-round", SYNC_ONLY);
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    c.query_drop("ALTER TABLE acct ADD COLUMN c INT DEFAULT 7").await.expect("ALTER TABLE");
    let counter = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'COM_CREATE_TABLE'";
    let before = replica().sql(counter).expect("replica");
    // Three rounds of the maintenance loop (one every 5 s).
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(replica().sql(counter).expect("replica"), before, "CREATE TABLE on the replica across three idle rounds");
    assert_eq!(replica().sql(DEFINITION).expect("replica"), primary().sql(DEFINITION).expect("primary"));
}

//! Faults against sync (two-phase commit) tables: a partition with `on_partition = "block"`,
//! latency above `partition_latency`, the link cut in the middle of a transaction, and the
//! capgate process killed between the primary's COMMIT and `COMMIT PREPARED` (recovery
//! finishes the job after a restart, and rolls back what was never decided). Each test uses
//! its own tables and link, and ends by comparing its tables on both sites.
//!
//! Timings are only ever asserted as lower bounds: the machine may be slow, never fast.

use std::time::{Duration, Instant};

use crate::replication::{bed, on_both, own_link, primary_rows, proxy, replica_rows, verify_equal, wait_until};
use crate::support::{connect, scratch, sqlstate, Process};

/// `sf_blk*` block for 3 s, `sf_blkl*` block for longer (the restore case must not race the
/// timeout on a slow machine), `sf_fail*` and every other `sf_*` table fail at once.
const POLICY: &str = "default = \"local\"\n\
    [[table]]\nmatch = \"public.sf_blkl*\"\nmode = \"sync\"\non_partition = \"block\"\npartition_timeout = \"30s\"\n\
    [[table]]\nmatch = \"public.sf_blk_*\"\nmode = \"sync\"\non_partition = \"block\"\npartition_timeout = \"3s\"\n\
    [[table]]\nmatch = \"public.sf_*\"\nmode = \"sync\"\non_partition = \"fail\"\n";

#[tokio::test]
async fn block_waits_for_the_partition_timeout_then_refuses_or_goes_through_once_healed() {
    let _one = crate::replication::exclusive().await;
    on_both(
        "DROP TABLE IF EXISTS sf_blk_t, sf_blkl_t, sf_fail_probe; \
         CREATE TABLE sf_blk_t (id int PRIMARY KEY, v text); \
         CREATE TABLE sf_blkl_t (id int PRIMARY KEY, v text); \
         CREATE TABLE sf_fail_probe (id int PRIMARY KEY)",
    )
    .await;
    let link = own_link();
    let p = proxy("sf-block", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.batch_execute("INSERT INTO sf_blk_t VALUES (1, 'before')").await.unwrap();
    app.batch_execute("INSERT INTO sf_blkl_t VALUES (1, 'before')").await.unwrap();

    // Cut, and wait until capgate sees the partition (a fail table is refused at once then).
    link.blackhole();
    let mut probe = 0;
    wait_until("the partition to be seen", Duration::from_secs(30), async || {
        probe += 1;
        match app.batch_execute(&format!("INSERT INTO sf_fail_probe VALUES ({probe})")).await {
            Err(e) => sqlstate(&e) == "55000" && e.as_db_error().unwrap().message().contains("partitioned"),
            Ok(()) => panic!("a sync write went through while the replica was cut off"),
        }
    })
    .await;

    // A blocked write is refused after the partition timeout, not before.
    let start = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(60), app.batch_execute("INSERT INTO sf_blk_t VALUES (2, 'during')"))
        .await
        .expect("a blocked write must end within its partition timeout (60 s bound)")
        .expect_err("written while the replica was cut off");
    let waited = start.elapsed();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    assert!(waited >= Duration::from_secs(1), "refused after {waited:?}: it did not block");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("public.sf_blk_t") && msg.contains("on_partition = \"block\""), "{msg}");
    assert!(!msg.contains("\"fail\""), "the refusal names a setting the table does not have: {msg}");

    // In a multi-statement Query, the statements before the blocked one keep their results,
    // as when a statement fails in PostgreSQL: the row, then the refusal, then idle.
    let mut raw = crate::support::Raw::login(p.addr, "postgres");
    raw.send(&crate::support::query("SELECT 'kept' AS k; INSERT INTO sf_blk_t VALUES (3, 'during')"));
    let replies = raw.until_ready();
    let tags: Vec<u8> = replies.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"TDCEZ".to_vec(), "{replies:?}");
    assert_eq!(replies[3].field(b'C').as_deref(), Some("55000"), "{:?}", replies[3].field(b'M'));
    assert!(replies[1].body.ends_with(b"kept"), "{:?}", replies[1]);
    assert_eq!(replies[4].body, b"I".to_vec());

    // A write blocked while the link heals goes through.
    let url = p.url("postgres", "postgres");
    let blocked = tokio::spawn(async move {
        let c = connect(&url).await;
        let start = Instant::now();
        let r = c.batch_execute("INSERT INTO sf_blkl_t VALUES (2, 'healed')").await;
        (r, start.elapsed())
    });
    // The same in the extended protocol: its Bind waits, and the Sync that ends its implicit
    // transaction is then still a sync commit (it was committed uncoordinated, and refused
    // with CGS01, when the held Bind skipped noting that its group may change a sync table).
    let url = p.url("postgres", "postgres");
    let blocked_extended = tokio::spawn(async move {
        let c = connect(&url).await;
        c.execute("INSERT INTO sf_blkl_t VALUES ($1, 'healed, extended')", &[&3i32]).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!blocked.is_finished(), "the write did not block");
    assert!(!blocked_extended.is_finished(), "the extended-protocol write did not block");
    link.restore();
    let (r, waited) = tokio::time::timeout(Duration::from_secs(60), blocked).await.expect("the blocked write never ended").unwrap();
    r.unwrap_or_else(|e| panic!("the blocked write failed after the link healed: {e:?}"));
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    let r = tokio::time::timeout(Duration::from_secs(60), blocked_extended).await.expect("the blocked extended write never ended").unwrap();
    r.unwrap_or_else(|e| panic!("the blocked extended-protocol write failed after the link healed: {e:?}"));

    assert_eq!(primary_rows("SELECT id, v FROM sf_blk_t ORDER BY id").await, vec!["1|before"]);
    assert_eq!(primary_rows("SELECT id, v FROM sf_blkl_t ORDER BY id").await, vec!["1|before", "2|healed", "3|healed, extended"]);
    // verify_equal first waits for the replica's prepared transactions to be resolved: the
    // COMMIT PREPARED of the writes just before the cut may have been lost to the blackhole,
    // and is then recovery's to finish.
    verify_equal(&["public.sf_blk_t", "public.sf_blkl_t", "public.sf_fail_probe"]).await;
    assert_eq!(replica_rows("SELECT id, v FROM sf_blkl_t ORDER BY id").await, vec!["1|before", "2|healed", "3|healed, extended"]);
}

#[tokio::test]
async fn an_extended_protocol_write_refused_during_a_partition_leaves_the_session_usable() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS sf_ext; CREATE TABLE sf_ext (id int PRIMARY KEY)").await;
    let link = own_link();
    let p = proxy("sf-extended", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.execute("INSERT INTO sf_ext VALUES ($1)", &[&1i32]).await.unwrap();
    link.blackhole();
    wait_until("the partition to be seen", Duration::from_secs(30), async || {
        app.batch_execute("INSERT INTO sf_ext VALUES (0)").await.is_err_and(|e| sqlstate(&e) == "55000")
    })
    .await;

    // tokio-postgres prepares (Parse, Describe, Sync), then sends Bind, Execute, Sync: the
    // write is refused at its Bind, and the Sync after it must still be answered. (It hung:
    // the Sync waited for replies to the Bind and Execute the primary skips after an error.)
    // The 60 s bound only turns a hang into a failure.
    let bound = Duration::from_secs(60);
    let err = tokio::time::timeout(bound, app.execute("INSERT INTO sf_ext VALUES ($1)", &[&2i32]))
        .await
        .expect("the refusal is answered")
        .expect_err("refused while the replica is cut off");
    assert_eq!(sqlstate(&err), "55000", "{err:?}");
    let next = tokio::time::timeout(bound, app.query_one("SELECT count(*) FROM sf_ext", &[])).await.expect("the session answers again");
    assert_eq!(next.unwrap().get::<_, i64>(0), 1, "only the row written before the cut");

    link.restore();
    wait_until("writes accepted again", Duration::from_secs(60), async || {
        tokio::time::timeout(bound, app.execute("INSERT INTO sf_ext VALUES ($1)", &[&3i32])).await.expect("answered").is_ok()
    })
    .await;
    verify_equal(&["public.sf_ext"]).await;
    assert_eq!(replica_rows("SELECT id FROM sf_ext ORDER BY id").await, vec!["1", "3"]);
}

/// tokio-postgres's `copy_in` of a sync table during a partition: the client gets the
/// refusal, and its connection stays in step (the replies of the next statements are theirs).
#[tokio::test]
async fn a_copy_in_refused_during_a_partition_keeps_the_connection_in_step() {
    let _one = crate::replication::exclusive().await;
    on_both(
        "DROP TABLE IF EXISTS sf_copy, sf_blk_copy; CREATE TABLE sf_copy (id int PRIMARY KEY); \
         CREATE TABLE sf_blk_copy (id int PRIMARY KEY)",
    )
    .await;
    let link = own_link();
    let p = proxy("sf-copy", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.execute("INSERT INTO sf_copy VALUES ($1)", &[&1i32]).await.unwrap();
    link.blackhole();
    wait_until("the partition to be seen", Duration::from_secs(30), async || {
        app.batch_execute("INSERT INTO sf_copy VALUES (0)").await.is_err_and(|e| sqlstate(&e) == "55000")
    })
    .await;
    let bound = Duration::from_secs(60);
    for round in 0..3 {
        let err = match tokio::time::timeout(bound, app.copy_in::<_, bytes::Bytes>("COPY sf_copy FROM STDIN")).await.expect("answered") {
            Ok(_) => panic!("round {round}: COPY into a sync table accepted during a partition"),
            Err(e) => e,
        };
        assert_eq!(sqlstate(&err), "55000", "round {round}: {err:?}");
        assert!(err.as_db_error().is_some_and(|d| d.message().contains("public.sf_copy")), "{err:?}");
        // The next statements get their own answers, in both protocols.
        let n = tokio::time::timeout(bound, app.query_one("SELECT count(*) FROM sf_copy", &[])).await.expect("answered").unwrap();
        assert_eq!(n.get::<_, i64>(0), 1, "round {round}");
        let rows = tokio::time::timeout(bound, app.simple_query("SELECT 'in step'")).await.expect("answered").unwrap();
        let text = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(text.as_deref(), Some("in step"), "round {round}");
        let v = tokio::time::timeout(bound, app.query_one("SELECT $1::int + 1", &[&round])).await.expect("answered").unwrap();
        assert_eq!(v.get::<_, i32>(0), round + 1, "round {round}");
    }
    // A table with on_partition = "block": the COPY waits out its partition_timeout, then is
    // refused the same way.
    let err = match tokio::time::timeout(bound, app.copy_in::<_, bytes::Bytes>("COPY sf_blk_copy FROM STDIN")).await.expect("answered") {
        Ok(_) => panic!("COPY into a blocking sync table accepted during a partition"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&err), "55000", "{err:?}");
    let msg = err.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(msg.contains("public.sf_blk_copy") && msg.contains("waited"), "{msg}");
    let n = tokio::time::timeout(bound, app.query_one("SELECT count(*) FROM sf_blk_copy", &[])).await.expect("answered").unwrap();
    assert_eq!(n.get::<_, i64>(0), 0);
    link.restore();
}

#[tokio::test]
async fn latency_above_partition_latency_refuses_writes_until_it_drops() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS sf_slow; CREATE TABLE sf_slow (id int PRIMARY KEY, v text)").await;
    let link = own_link();
    // proxy() sets partition_latency = 500ms: 400 ms each way is an 800 ms round trip.
    let p = proxy("sf-latency", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.batch_execute("INSERT INTO sf_slow VALUES (0, 'fast')").await.unwrap();

    link.set_latency(Duration::from_millis(400));
    let mut id = 0;
    wait_until("writes to be refused for latency", Duration::from_secs(60), async || {
        id += 1;
        // Before the health loop marks the replica partitioned a write may still go through
        // (slowly) or fail on its deadline; either way only 55000 is an acceptable error.
        match app.batch_execute(&format!("INSERT INTO sf_slow VALUES ({id}, 'slow')")).await {
            Err(e) => {
                assert_eq!(sqlstate(&e), "55000", "{e:?}");
                e.as_db_error().unwrap().message().contains("partitioned")
            }
            Ok(()) => false,
        }
    })
    .await;

    link.set_latency(Duration::ZERO);
    wait_until("writes to be accepted again", Duration::from_secs(30), async || {
        id += 1;
        match app.batch_execute(&format!("INSERT INTO sf_slow VALUES ({id}, 'fast again')")).await {
            Err(e) => {
                assert_eq!(sqlstate(&e), "55000", "{e:?}");
                false
            }
            Ok(()) => true,
        }
    })
    .await;
    let last = format!("{id}|fast again");
    assert_eq!(primary_rows("SELECT id, v FROM sf_slow ORDER BY id DESC LIMIT 1").await, vec![last.clone()]);
    verify_equal(&["public.sf_slow"]).await;
    assert_eq!(replica_rows("SELECT id, v FROM sf_slow ORDER BY id DESC LIMIT 1").await, vec![last]);
}

#[tokio::test]
async fn a_cut_during_a_transaction_fails_its_commit_and_changes_nothing() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS sf_mid; CREATE TABLE sf_mid (id int PRIMARY KEY, v text); INSERT INTO sf_mid VALUES (1, 'orig')").await;
    let link = own_link();
    let p = proxy("sf-mid", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;

    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("UPDATE sf_mid SET v = 'changed' WHERE id = 1").await.unwrap();
    link.blackhole();
    let r = tokio::time::timeout(Duration::from_secs(60), app.batch_execute("COMMIT"))
        .await
        .expect("COMMIT hung for over 60 s with the replica cut off");
    let e = r.expect_err("COMMIT succeeded although the replica could not prepare");
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    // Answered when the health loop saw the partition, not when the replica deadline
    // (5 × heartbeat_timeout here) ran out.
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("became partitioned while preparing") && msg.contains("public.sf_mid"), "{msg}");
    // The session is usable and outside any transaction.
    assert_eq!(app.query_one("SELECT v FROM sf_mid WHERE id = 1", &[]).await.unwrap().get::<_, String>(0), "orig");
    assert!(app.batch_execute("SAVEPOINT s").await.is_err(), "still inside a transaction after the failed COMMIT");

    link.restore();
    verify_equal(&["public.sf_mid"]).await;
    assert_eq!(primary_rows("SELECT v FROM sf_mid").await, vec!["orig"]);
    assert_eq!(replica_rows("SELECT v FROM sf_mid").await, vec!["orig"]);
    // Nothing is left holding the row on the replica: the next write to it goes through.
    wait_until("the row to be writable again", Duration::from_secs(90), async || {
        app.batch_execute("UPDATE sf_mid SET v = 'after' WHERE id = 1").await.is_ok()
    })
    .await;
    verify_equal(&["public.sf_mid"]).await;
    assert_eq!(replica_rows("SELECT v FROM sf_mid").await, vec!["after"]);
}

/// An autocommit COPY (simple protocol, as psql's `\\copy` sends it) into a sync table whose
/// replica is cut while the rows stream in: its commit cannot be prepared, so the client gets
/// the refusal in place of `COPY n`, as PostgreSQL sends a simple Query's CommandComplete only
/// once its implicit transaction committed. Found by the chaos suite's COPY workload.
#[tokio::test]
async fn an_autocommit_copy_cut_off_before_its_commit_is_refused_not_acknowledged() {
    use crate::support::{frame, query, Raw};
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS sf_copy; CREATE TABLE sf_copy (id int PRIMARY KEY, v text)").await;
    let link = own_link();
    let p = proxy("sf-copy", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.batch_execute("INSERT INTO sf_copy VALUES (1, 'before')").await.unwrap();

    let addr = p.addr;
    let link_ref = &link;
    let msgs = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let mut raw = Raw::login(addr, "postgres");
                raw.send(&query("COPY sf_copy FROM STDIN"));
                let started = raw.recv().expect("a reply to COPY");
                assert_eq!(started.tag, b'G', "{started:?}");
                raw.send(&frame(b'd', b"2\tcopied\n3\tcopied\n"));
                link_ref.blackhole();
                raw.send(&frame(b'c', b""));
                raw.until_ready()
            })
            .join()
            .unwrap()
    });
    link.restore();
    let tags: String = msgs.iter().map(|m| m.tag as char).collect();
    assert!(!tags.contains('C'), "COPY acknowledged although its commit could not be prepared: {msgs:?}");
    let error = msgs.iter().find(|m| m.tag == b'E').unwrap_or_else(|| panic!("no error: {msgs:?}"));
    assert_eq!(error.field(b'C').as_deref(), Some("55000"), "{error:?}");
    assert!(tags.ends_with('Z'), "{tags}");
    assert_eq!(primary_rows("SELECT count(*) FROM sf_copy").await, vec!["1"]);
    verify_equal(&["public.sf_copy"]).await;
}

/// Prepared transactions of site `f` on the replica.
async fn prepared_of_f() -> Vec<String> {
    replica_rows("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'capgate:f:%' ORDER BY gid").await
}

#[tokio::test]
async fn recovery_commits_what_a_killed_capgate_decided_and_rolls_back_the_undecided() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS sf_kill; CREATE TABLE sf_kill (id int PRIMARY KEY, v text); INSERT INTO sf_kill VALUES (1, 'old')").await;
    let b = bed();
    capgate::store::postgres::primary::install_primary(&connect(&b.a_primary_url()).await).await.unwrap();
    let link = own_link();
    let dir = scratch("sf-kill");
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let port = capgate::testbed::free_port();
    // Its own site name, so its recovery (with a short grace) never touches the prepared
    // transactions of the other tests' proxies (site "a"), nor theirs this test's.
    // partition_latency and heartbeat_timeout are generous so that the 2 s each way used
    // below does not refuse or time out the PREPARE (the deadline is 5 × the larger).
    let config = dir.join("capgate.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"f\"\nlisten = \"127.0.0.1:{port}\"\npolicy = \"{}\"\nrecovery_grace = \"5s\"\n\n[primary]\nurl = \"{}?sslmode=disable\"\n\n[[replicas]]\nname = \"b\"\nurl = \"postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable&connect_timeout=2\"\nheartbeat_interval = \"100ms\"\nheartbeat_timeout = \"6s\"\npartition_latency = \"6s\"\n",
            dir.join("policy.toml").display(),
            b.a_primary_url(),
            link.addr().port()
        ),
    )
    .unwrap();
    let log = dir.join("capgate.log");
    let mut first = Process::start(&config, port, &log);
    let app = connect(&first.url()).await;
    wait_until("the replica to take sync writes", Duration::from_secs(30), async || {
        app.batch_execute("UPDATE sf_kill SET v = 'warm' WHERE id = 1").await.is_ok()
    })
    .await;
    // COMMIT PREPARED runs after the client's COMMIT returned.
    wait_until("the replica to commit", Duration::from_secs(30), async || replica_rows("SELECT v FROM sf_kill").await == vec!["warm"])
        .await;

    // PREPARE gets through (slowly); COMMIT PREPARED, sent after the primary's COMMIT, sits
    // in the link's 2 s delay line when the link is cut, and is dropped.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("UPDATE sf_kill SET v = 'new' WHERE id = 1").await.unwrap();
    link.set_latency(Duration::from_secs(2));
    app.batch_execute("COMMIT").await.unwrap();
    link.blackhole();
    first.kill();
    drop(app);

    assert_eq!(primary_rows("SELECT v FROM sf_kill").await, vec!["new"]);
    let gids = prepared_of_f().await;
    assert_eq!(gids.len(), 1, "expected the one prepared transaction of the killed capgate: {gids:?}");
    assert_eq!(replica_rows("SELECT v FROM sf_kill").await, vec!["warm"], "committed on the replica before the crash");
    assert_eq!(
        primary_rows(&format!("SELECT count(*) FROM capgate.decisions WHERE gid = '{}'", gids[0])).await,
        vec!["1"],
        "the decision record"
    );

    // Restart with the same configuration: recovery commits the decided transaction.
    link.restore();
    let second = Process::start(&config, port, &log);
    wait_until("recovery to commit the decided transaction", Duration::from_secs(60), async || prepared_of_f().await.is_empty()).await;
    assert_eq!(replica_rows("SELECT v FROM sf_kill").await, vec!["new"]);

    // A prepared transaction of this site without a decision is rolled back after the grace.
    let replica = connect(&b.b_replica_url_direct()).await;
    replica.batch_execute("BEGIN; INSERT INTO sf_kill VALUES (99, 'orphan'); PREPARE TRANSACTION 'capgate:f:deadbeef:1'").await.unwrap();
    assert_eq!(prepared_of_f().await, vec!["capgate:f:deadbeef:1"], "rolled back at once, within its grace");
    wait_until("recovery to roll back the undecided transaction", Duration::from_secs(60), async || prepared_of_f().await.is_empty()).await;
    assert_eq!(replica_rows("SELECT count(*) FROM sf_kill WHERE id = 99").await, vec!["0"]);

    // Still serving after all this.
    let app = connect(&second.url()).await;
    app.batch_execute("UPDATE sf_kill SET v = 'final' WHERE id = 1").await.unwrap();
    verify_equal(&["public.sf_kill"]).await;
    assert_eq!(replica_rows("SELECT v FROM sf_kill").await, vec!["final"]);
}

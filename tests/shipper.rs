//! The async shipper against a real primary and replica, the replica behind the
//! fault-injecting link. Writes are captured with `outbox::capture` (the relay's side is
//! simulated); every test uses its own origin, tables and link on one shared two-site bed,
//! so the tests run in parallel without seeing each other's rows.
//!
//! Assertions are on what arrived (rows, the watermark, conflict records) and on the
//! shipper's counters, never on timings.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use capgate::backend::postgres::Upstream;
use capgate::config::DbUrl;
use capgate::policy::OnConflict;
use capgate::replicate::outbox::capture::{self, Capture, Param, ParamFormat};
use capgate::replicate::outbox::{schema, Shipper, ShipperConfig};
use capgate::testbed::link::Link;
use capgate::testbed::sites::TwoSites;
use tokio_postgres::{Client, NoTls};

#[path = "shipper/bench.rs"]
mod bench;
#[path = "shipper/env.rs"]
mod env;

use env::{bed, client, env, until, PATIENCE};

#[tokio::test]
async fn writes_arrive_once_and_in_commit_order() {
    let env = env("ship_order").await;
    env.insert(1, "").await;
    // Concurrent-looking history on one hot row: each update appends its number.
    for i in 0..200 {
        let data = format!("UPDATE {} SET v = v || ',' || {i} WHERE k = 1", env.table);
        let stmt = format!("UPDATE {} SET v = v || ',' || $1 WHERE k = 1", env.table);
        let c = env.capture(&stmt, &[Some(&i.to_string())], 1);
        capture::commit_captured(&env.primary, &data, &[c]).await.expect("update");
    }
    for k in 2..=100 {
        env.insert(k, "x").await;
    }
    let shipper = Shipper::start(env.config("b"));
    env.caught_up(&shipper).await;
    let get = format!("SELECT v FROM {} WHERE k = 1", env.table);
    let on_primary: String = env.primary.query_one(&get, &[]).await.expect("primary").get(0);
    let on_replica: String = env.replica.query_one(&get, &[]).await.expect("replica").get(0);
    assert_eq!(on_replica, on_primary);
    assert!(on_replica.ends_with(",198,199"));
    assert_eq!(env.count(&env.replica).await, 100);
    let stats = shipper.stats();
    assert_eq!(stats.statements.load(Ordering::Relaxed), 300);
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 300);
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 0);
    assert!(env.conflicts().await.is_empty());
    // Nothing more is shipped once caught up, and lag says so.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stats.statements.load(Ordering::Relaxed), 300);
    let lag = shipper.lag().borrow().clone();
    assert_eq!((lag.pending_rows, lag.seconds()), (0, 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_row_replay_in_commit_order() {
    let env = std::sync::Arc::new(env("ship_concurrent").await);
    env.insert(1, "").await;
    let shipper = Shipper::start(env.config("b"));
    let mut writers = Vec::new();
    for w in 0..8 {
        let env = env.clone();
        writers.push(tokio::spawn(async move {
            let c = client(&bed().a_primary_url()).await;
            for i in 0..40 {
                let tag = format!("{w}.{i}");
                let data = format!("UPDATE {} SET v = v || ',{tag}' WHERE k = 1", env.table);
                let stmt = format!("UPDATE {} SET v = v || ',' || $1 WHERE k = 1", env.table);
                let cap = env.capture(&stmt, &[Some(&tag)], 1);
                capture::commit_captured(&c, &data, &[cap]).await.expect("update");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    env.caught_up(&shipper).await;
    let get = format!("SELECT v FROM {} WHERE k = 1", env.table);
    let on_primary: String = env.primary.query_one(&get, &[]).await.expect("p").get(0);
    let on_replica: String = env.replica.query_one(&get, &[]).await.expect("r").get(0);
    assert_eq!(on_primary.split(',').count(), 1 + 8 * 40);
    assert_eq!(on_replica, on_primary, "the replica replayed the updates in the primary's commit order");
    assert!(env.conflicts().await.is_empty());
}

#[tokio::test]
async fn a_thousand_writes_through_a_slow_link_take_few_round_trips() {
    let env = env("ship_batch").await;
    env.link.set_latency(Duration::from_millis(25));
    for k in 0..1000 {
        env.insert(k, "v").await;
    }
    let link_before = env.link.stats();
    let started = Instant::now();
    let shipper = Shipper::start(env.config("b"));
    env.caught_up(&shipper).await;
    eprintln!("drained 1000 statements in {:?}", started.elapsed());
    let stats = shipper.stats();
    until("the stats", || stats.statements.load(Ordering::Relaxed) == 1000).await;
    let batches = stats.batches.load(Ordering::Relaxed);
    eprintln!("1000 writes in {batches} batches; link {link_before:?} -> {:?}", env.link.stats());
    assert!(batches <= 3, "{batches} batches for 1000 statements");
    assert_eq!(stats.statements.load(Ordering::Relaxed), 1000);
    assert_eq!(env.count(&env.replica).await, 1000);
}

#[tokio::test]
async fn blackhole_mid_stream_then_restore_delivers_everything_once_and_lag_recovers() {
    let env = env("ship_blackhole").await;
    let shipper = Shipper::start(env.config("b"));
    for k in 0..100 {
        env.insert(k, "before").await;
    }
    env.caught_up(&shipper).await;
    env.link.blackhole();
    for k in 100..300 {
        env.insert(k, "during").await;
    }
    // Lag rises while the replica is unreachable.
    let lag = shipper.lag();
    until("pending rows while blackholed", || lag.borrow().pending_rows > 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = lag.borrow().clone();
    assert!(seen.seconds() >= 1.0, "{seen:?}");
    assert!(seen.table(&env.table).pending_rows > 0, "{seen:?}");
    until("a failed batch", || shipper.stats().retries.load(Ordering::Relaxed) > 0).await;
    env.link.restore();
    env.caught_up(&shipper).await;
    assert_eq!(env.count(&env.replica).await, 300);
    assert!(env.conflicts().await.is_empty(), "a duplicate would have conflicted on the key");
    until("lag back to 0", || lag.borrow().pending_rows == 0 && lag.borrow().seconds() == 0.0).await;
    eprintln!("retries: {}, last error: {:?}", shipper.stats().retries.load(Ordering::Relaxed), shipper.stats().last_error());
}

#[tokio::test]
async fn dropping_the_shipper_mid_batch_and_restarting_loses_and_duplicates_nothing() {
    let env = env("ship_kill").await;
    env.link.set_latency(Duration::from_millis(50));
    for k in 0..3000 {
        env.insert(k, "v").await;
    }
    for round in 0..3 {
        let mut config = env.config("b");
        config.max_statements = 300;
        let shipper = Shipper::start(config);
        until("a batch", || shipper.stats().batches.load(Ordering::Relaxed) > 0).await;
        // The next batch is on the wire now (100 ms round trip): drop it there.
        tokio::time::sleep(Duration::from_millis(30 + 20 * round)).await;
        drop(shipper);
    }
    let shipper = Shipper::start(env.config("b"));
    env.caught_up(&shipper).await;
    assert_eq!(env.watermark().await, env.last_seq().await);
    assert_eq!(env.count(&env.replica).await, 3000);
    assert!(env.conflicts().await.is_empty(), "a replayed insert would have conflicted on the key");
    assert!(shipper.stats().statements.load(Ordering::Relaxed) < 3000, "the restart resumed from the watermark");
}

#[tokio::test]
async fn conflicts_are_recorded_and_skip_goes_on() {
    let env = env("ship_skip").await;
    let log = std::env::temp_dir().join(format!("capgate-conflicts-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    env.insert(5, "a").await;
    env.insert(7, "a").await;
    let mut config = env.config("b");
    config.on_conflict = std::sync::Arc::new(|_| OnConflict::Skip);
    config.conflict_log = Some(log.clone());
    let shipper = Shipper::start(config);
    env.caught_up(&shipper).await;
    // The replica diverges: row 5 deleted there, row 8 already present.
    env.replica
        .batch_execute(&format!("DELETE FROM {0} WHERE k = 5; INSERT INTO {0} VALUES (8, 'local')", env.table))
        .await
        .expect("diverge");
    let data = format!("UPDATE {} SET v = 'b' WHERE k = 5", env.table);
    let stmt = format!("UPDATE {} SET v = $1 WHERE k = 5", env.table);
    capture::commit_captured(&env.primary, &data, &[env.capture(&stmt, &[Some("b")], 1)]).await.expect("update");
    env.insert(8, "primary").await;
    env.insert(9, "after").await;
    env.caught_up(&shipper).await;
    let conflicts = env.conflicts().await;
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    let (expected, actual, state, resolution): (Option<i64>, Option<i64>, String, String) =
        (conflicts[0].get(1), conflicts[0].get(2), conflicts[0].get(3), conflicts[0].get(4));
    assert_eq!((expected, actual, state.as_str(), resolution.as_str()), (Some(1), Some(0), "CGR01", "skipped"));
    let statement: String = conflicts[0].get(5);
    assert!(statement.contains("SET v = (CAST($cg$b$cg$ AS text)) WHERE k = 5"), "{statement}");
    let state: String = conflicts[1].get(3);
    assert_eq!(state, "23505", "duplicate key");
    let v: String = env.replica.query_one(&format!("SELECT v FROM {} WHERE k = 9", env.table), &[]).await.expect("k=9").get(0);
    assert_eq!(v, "after", "skip goes on");
    let v: String = env.replica.query_one(&format!("SELECT v FROM {} WHERE k = 8", env.table), &[]).await.expect("k=8").get(0);
    assert_eq!(v, "local", "the conflicting statement was not applied");
    assert_eq!(shipper.stats().conflicts.load(Ordering::Relaxed), 2);
    let by: Vec<_> = shipper.stats().conflicts_by_table().into_iter().collect();
    assert_eq!(by, vec![((env.table.clone(), "error".to_owned()), 1), ((env.table.clone(), "row_count".to_owned()), 1)]);
    let lines = std::fs::read_to_string(&log).expect("conflict log");
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(lines.contains("\"replica\":\"b\"") && lines.contains("23505"), "{lines}");
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn halt_applies_up_to_the_conflict_and_stops() {
    let env = env("ship_halt").await;
    env.insert(1, "a").await;
    let shipper = Shipper::start(env.config("b"));
    env.caught_up(&shipper).await;
    env.replica.batch_execute(&format!("DELETE FROM {} WHERE k = 1", env.table)).await.expect("diverge");
    env.insert(2, "before").await;
    let before = env.last_seq().await;
    let data = format!("UPDATE {} SET v = 'b' WHERE k = 1", env.table);
    let stmt = format!("UPDATE {} SET v = $1 WHERE k = 1", env.table);
    // The halting transaction also inserts a row: none of it may arrive.
    let c = [env.capture(&stmt, &[Some("b")], 1), env.capture(&format!("INSERT INTO {} VALUES (3, 'x')", env.table), &[], 1)];
    capture::commit_captured(&env.primary, &format!("{data}; INSERT INTO {} VALUES (3, 'x')", env.table), &c).await.expect("tx");
    env.insert(4, "after").await;
    until("halt", || shipper.stats().halted().is_some()).await;
    eprintln!("{:?}", shipper.stats().halted());
    assert_eq!(env.watermark().await, before);
    let keys: Vec<i32> =
        env.replica.query(&format!("SELECT k FROM {} ORDER BY k", env.table), &[]).await.expect("keys").iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, vec![2]);
    let conflicts = env.conflicts().await;
    assert_eq!(conflicts.len(), 1);
    let resolution: String = conflicts[0].get(4);
    assert_eq!(resolution, "halted");
    // It stays halted, and lag shows what waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.watermark().await, before);
    let lag = shipper.lag();
    until("lag of the halted rows", || lag.borrow().pending_rows == 3).await;
}

#[tokio::test]
async fn only_one_shipper_ships_and_another_takes_over() {
    let env = env("ship_lock").await;
    let first = Shipper::start(env.config("b"));
    until("first is leader", || first.stats().leader.load(Ordering::Relaxed)).await;
    let second = Shipper::start(env.config("b"));
    for k in 0..50 {
        env.insert(k, "v").await;
    }
    env.caught_up(&first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.stats().leader.load(Ordering::Relaxed));
    assert_eq!(second.stats().statements.load(Ordering::Relaxed), 0);
    assert_eq!(first.stats().statements.load(Ordering::Relaxed), 50);
    drop(first);
    until("second takes over", || second.stats().leader.load(Ordering::Relaxed)).await;
    for k in 50..80 {
        env.insert(k, "v").await;
    }
    env.caught_up(&second).await;
    assert_eq!(second.stats().statements.load(Ordering::Relaxed), 30);
    assert_eq!(env.count(&env.replica).await, 80);
}

#[tokio::test]
async fn rolled_back_captures_are_never_shipped() {
    let env = env("ship_rollback").await;
    let shipper = Shipper::start(env.config("b"));
    env.primary.batch_execute("BEGIN").await.expect("begin");
    env.primary.batch_execute(&format!("INSERT INTO {} VALUES (1, 'no')", env.table)).await.expect("insert");
    let stmt = format!("INSERT INTO {} VALUES (1, 'no')", env.table);
    capture::record(&env.primary, &env.capture(&stmt, &[], 1)).await.expect("record");
    capture::order(&env.primary).await.expect("order");
    env.primary.batch_execute("ROLLBACK").await.expect("rollback");
    env.insert(2, "yes").await;
    env.caught_up(&shipper).await;
    let keys: Vec<i32> =
        env.replica.query(&format!("SELECT k FROM {} ORDER BY k", env.table), &[]).await.expect("keys").iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, vec![2]);
    assert_eq!(shipper.stats().statements.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn binary_parameters_and_session_settings_replay_as_on_the_primary() {
    let env = env("ship_types").await;
    let table = "public.ship_types_ts";
    for c in [&env.primary, &env.replica] {
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k int PRIMARY KEY, at timestamptz, d date, n numeric)"
        ))
        .await
        .expect("t");
    }
    let data = format!("SET LOCAL TimeZone = 'Asia/Tokyo'; SET LOCAL DateStyle = 'SQL, DMY'; INSERT INTO {table} VALUES (1, '2026-01-02 03:04:05', '03/04/2026', 12.5)");
    let stmt = format!("INSERT INTO {table} VALUES ($1, $2, $3, $4)");
    let c = Capture {
        origin: env.origin.clone(),
        statement: stmt,
        params: vec![
            Param { type_oid: 23, format: ParamFormat::Binary, value: Some(1i32.to_be_bytes().to_vec()) },
            Param { type_oid: 1184, format: ParamFormat::Text, value: Some(b"2026-01-02 03:04:05".to_vec()) },
            Param { type_oid: 1082, format: ParamFormat::Text, value: Some(b"03/04/2026".to_vec()) },
            Param { type_oid: 1700, format: ParamFormat::Text, value: Some(b"12.5".to_vec()) },
        ],
        settings: vec![("timezone".into(), "Asia/Tokyo".into()), ("datestyle".into(), "SQL, DMY".into())],
        tables: vec![table.to_owned()],
        row_count: Some(1),
    };
    capture::commit_captured(&env.primary, &data, &[c]).await.expect("captured");
    let shipper = Shipper::start(env.config("b"));
    env.caught_up(&shipper).await;
    let get = format!("SELECT k, at::text, d::text, n::text FROM {table} SET");
    let get = get.trim_end_matches(" SET").to_owned() + " WHERE k = 1";
    let p = env.primary.query_one(&get, &[]).await.expect("p");
    let r = env.replica.query_one(&get, &[]).await.expect("r");
    let row = |x: &tokio_postgres::Row| (x.get::<_, i32>(0), x.get::<_, String>(1), x.get::<_, String>(2), x.get::<_, String>(3));
    assert_eq!(row(&r), row(&p));
    assert!(env.conflicts().await.is_empty());
}

#[tokio::test]
async fn shipped_rows_are_pruned_after_the_retention() {
    let env = env("ship_prune").await;
    let mut config = env.config("b");
    config.retention = Duration::ZERO;
    config.prune_interval = Duration::from_millis(50);
    // Another replica that has applied nothing yet holds the rows back.
    config.all_replicas = vec!["b".into(), "c".into()];
    let shipper = Shipper::start(config.clone());
    for k in 0..10 {
        env.insert(k, "v").await;
    }
    env.caught_up(&shipper).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.outbox_rows().await, 10, "replica c has not applied them");
    drop(shipper);
    config.all_replicas = vec!["b".into()];
    let _shipper = Shipper::start(config);
    let t = Instant::now();
    while env.outbox_rows().await > 0 {
        assert!(t.elapsed() < PATIENCE, "not pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.count(&env.replica).await, 10);
}

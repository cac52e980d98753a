//! The async shipper against a real primary and replica, the replica behind the
//! fault-injecting link. Row changes are captured by the primary's real capture triggers
//! (writes made directly on the primary, as a DBA's psql would); every test has its own
//! database on both sites, so the tests run in parallel without seeing each other's changes.
//!
//! Assertions are on what arrived (rows compared as `row_to_json` text on both sides, the
//! replica's conflict records and table states) and on the shipper's counters, never on
//! timings.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use capgate::backend::postgres::Upstream;
use capgate::config::DbUrl;
use capgate::policy::OnConflict;
use capgate::replicate::shipper::{Shipper, ShipperConfig, TableState};
use capgate::store::postgres::primary::install_primary;
use capgate::testbed::link::Link;
use capgate::testbed::sites::TwoSites;
use tokio_postgres::{Client, NoTls};

#[path = "shipper/bench.rs"]
mod bench;
#[path = "shipper/env.rs"]
mod env;
#[path = "shipper/parts.rs"]
mod parts;
#[path = "shipper/writing.rs"]
mod writing;

use env::{bed, client, env, until, Env, PATIENCE};

const KV: &str = "CREATE TABLE t (k int PRIMARY KEY, v text)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_arrive_once_in_dependency_order() {
    let env = Arc::new(env("ship_order", KV, &["public.t"]).await);
    env.primary.batch_execute("INSERT INTO t VALUES (1, '')").await.expect("seed");
    let shipper = Shipper::start(env.config());
    copied(&shipper, "public.t").await;
    let mut writers = Vec::new();
    for w in 0..6 {
        let url = bed().a_primary().url("postgres", &env.db);
        writers.push(tokio::spawn(async move {
            let c = client(&url).await;
            for i in 0..40 {
                // A hot row (each appends its tag: the order shows), a row of its own, and a
                // transaction that reads the hot row to write another (read-dependent).
                c.batch_execute(&format!(
                    "BEGIN; UPDATE t SET v = v || ',{w}.{i}' WHERE k = 1; \
                     INSERT INTO t VALUES ({}, 'x') ON CONFLICT (k) DO UPDATE SET v = t.v || 'y'; COMMIT; \
                     INSERT INTO t SELECT 1000 + {w}, length(v)::text FROM t WHERE k = 1 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                    10 + w * 100 + i % 7
                ))
                .await
                .expect("write");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    env.converged(None, "t", &shipper).await;
    env.verify(&["public.t"]).await;
    assert!(env.conflicts().await.is_empty(), "an exact replay has no conflicts");
    let stats = shipper.stats();
    assert!(stats.changes.load(Ordering::Relaxed) >= 6 * 40 * 3);
    assert!(stats.halted().is_empty());
}

#[tokio::test]
async fn a_hundred_thousand_row_transaction_ships_in_pages() {
    let env = env("ship_large", "CREATE TABLE big (k int PRIMARY KEY, v text, pad text)", &["public.big"]).await;
    let mut config = env.config();
    config.deadline = Duration::from_secs(60);
    let shipper = Shipper::start(config);
    copied(&shipper, "public.big").await;
    env.primary
        .batch_execute("INSERT INTO big SELECT g, md5(g::text), repeat('p', 100) FROM generate_series(1, 100000) g")
        .await
        .expect("large transaction");
    env.converged(None, "big", &shipper).await;
    let stats = shipper.stats();
    // The table was empty when first copied; its 100,000 changes came in pages of at most
    // 5,000, all in one replica transaction.
    let batches = stats.batches.load(Ordering::Relaxed);
    assert!(batches >= 20, "{batches} round trips for 100,000 changes: pages are bounded");
    assert_eq!(stats.changes.load(Ordering::Relaxed), 100_000);
}

#[tokio::test]
async fn kills_and_resets_mid_stream_lose_and_duplicate_nothing() {
    let env = env("ship_kill", KV, &["public.t"]).await;
    let mut config = env.config();
    config.page_rows = 50;
    for round in 0..5 {
        let shipper = Shipper::start(config.clone());
        for k in 0..200 {
            let key = round * 1000 + k;
            env.primary
                .batch_execute(&format!("INSERT INTO t VALUES ({key}, 'r{round}'); UPDATE t SET v = v || '+' WHERE k = {key}"))
                .await
                .expect("write");
        }
        // Let it get somewhere, then kill it, or cut its connection mid-range.
        until("some progress", || {
            shipper.stats().changes.load(Ordering::Relaxed) > 0 || shipper.stats().ranges.load(Ordering::Relaxed) > 0
        })
        .await;
        if round % 2 == 0 {
            drop(shipper);
        } else {
            env.link.reset();
            drop(shipper);
        }
    }
    let shipper = Shipper::start(config);
    env.converged(None, "t", &shipper).await;
    // A change applied twice would be an insert_exists or update_differs conflict, which
    // halts under the default on_conflict.
    assert!(env.conflicts().await.is_empty());
    assert!(shipper.stats().halted().is_empty());
}

#[tokio::test]
async fn an_existing_table_is_copied_then_concurrent_writes_follow() {
    let env = env("ship_copy", "CREATE TABLE legacy (k int PRIMARY KEY, v text, n numeric)", &[]).await;
    env.primary
        .batch_execute("INSERT INTO legacy SELECT g, 'old ' || g, g / 7.0 FROM generate_series(1, 20000) g")
        .await
        .expect("existing rows");
    env.replica.batch_execute("INSERT INTO legacy VALUES (-1, 'stale replica row', 0)").await.expect("stale row");
    env.capture("public.legacy").await;
    let shipper = Shipper::start(env.config());
    let writer = {
        let url = bed().a_primary().url("postgres", &env.db);
        tokio::spawn(async move {
            let c = client(&url).await;
            for i in 0..300 {
                c.batch_execute(&format!(
                    "UPDATE legacy SET v = v || '.', n = n + 1 WHERE k % 97 = {}; INSERT INTO legacy VALUES ({}, 'new', {i})",
                    i % 97,
                    100_000 + i
                ))
                .await
                .expect("write");
            }
        })
    };
    writer.await.expect("writer");
    env.converged(None, "legacy", &shipper).await;
    env.verify(&["public.legacy"]).await;
    assert!(env.conflicts().await.is_empty());
    let tables = shipper.stats().tables();
    assert_eq!(tables.get("public.legacy").map(|t| t.state), Some(TableState::Copied), "{tables:?}");
}

/// A copy cut off before it committed (a partition, a kill) leaves the table `copying` on the
/// replica, its rows as they were: the next session copies it again. (Found by a chaos run:
/// such a table was left out of every range for good and diverged.)
#[tokio::test]
async fn a_copy_cut_off_before_it_committed_is_done_again() {
    let env = env("ship_recopy", KV, &["public.t"]).await;
    env.primary.batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200) g").await.expect("rows");
    {
        let first = Shipper::start(env.config());
        copied(&first, "public.t").await;
    }
    // What an interrupted first copy leaves: its mark committed, its transaction (which
    // emptied and loaded the table) rolled back.
    env.replica
        .batch_execute("UPDATE capgate.tables SET state = 'copying', snapshot = NULL WHERE tbl = 'public.t'; DELETE FROM t")
        .await
        .expect("an interrupted copy");
    env.primary.batch_execute("UPDATE t SET v = v || '!' WHERE k <= 50; INSERT INTO t VALUES (1000, 'new')").await.expect("writes");
    let second = Shipper::start(env.config());
    env.converged(None, "t", &second).await;
    env.verify(&["public.t"]).await;
    assert_eq!(second.stats().tables().get("public.t").map(|t| t.state), Some(TableState::Copied));
}

#[tokio::test]
async fn a_replica_added_later_gets_a_copy_and_what_follows() {
    let env = env("ship_later", KV, &["public.t"]).await;
    let late_db = "ship_later_c";
    bed().b_replica().create_database(late_db).expect("second replica db");
    let late = client(&bed().b_replica().url("postgres", late_db)).await;
    late.batch_execute(KV).await.expect("table on the second replica");
    let first = Shipper::start(env.config());
    env.primary.batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g").await.expect("writes");
    env.converged(None, "t", &first).await;
    let second = Shipper::start(env.config_to("c", late_db));
    env.primary.batch_execute("UPDATE t SET v = v || '!' WHERE k <= 100; DELETE FROM t WHERE k > 450").await.expect("more writes");
    env.converged(Some(&late), "t", &second).await;
    env.converged(None, "t", &first).await;
    assert!(second.stats().halted().is_empty());
}

#[tokio::test]
async fn a_table_missing_on_the_replica_is_refused_alone_and_resumes() {
    let ddl = "CREATE TABLE t (k int PRIMARY KEY, v text); CREATE TABLE absent (k int PRIMARY KEY, v text)";
    let env = env("ship_missing", ddl, &["public.t", "public.absent"]).await;
    env.replica.batch_execute("DROP TABLE absent").await.expect("drop on the replica");
    env.primary.batch_execute("INSERT INTO absent VALUES (1, 'a'); INSERT INTO t VALUES (1, 't')").await.expect("writes");
    let shipper = Shipper::start(env.config());
    env.converged(None, "t", &shipper).await;
    until("the missing table refused", || shipper.stats().halted().contains_key("public.absent")).await;
    let why = shipper.stats().halted()["public.absent"].clone();
    assert!(why.contains("public.absent") && why.contains("does not exist") && why.contains("capgate resume"), "{why}");
    // The other table keeps shipping while this one is refused.
    env.primary.batch_execute("INSERT INTO t VALUES (2, 't2'); INSERT INTO absent VALUES (2, 'b')").await.expect("writes");
    env.converged(None, "t", &shipper).await;
    // The operator creates the table and resumes it with the CLI, through the admin
    // listener: it is copied, then shipped.
    env.replica.batch_execute("CREATE TABLE absent (k int PRIMARY KEY, v text)").await.expect("create on the replica");
    let shippers = Arc::new(std::collections::HashMap::from([("b".to_owned(), shipper)]));
    let config = admin_for(&env, shippers.clone()).await;
    let wrong = resume_cli(&config, "nowhere", "public.absent").await;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("no replica is named `nowhere`"), "{wrong:?}");
    let done = resume_cli(&config, "b", "public.absent").await;
    assert!(done.status.success(), "{done:?}");
    assert!(String::from_utf8_lossy(&done.stdout).contains("public.absent is copied again to replica `b`"), "{done:?}");
    let shipper = &shippers["b"];
    env.converged(None, "absent", shipper).await;
    assert!(shipper.stats().halted().is_empty());
}

#[tokio::test]
async fn a_halting_conflict_stops_its_table_only_until_resumed() {
    let ddl = "CREATE TABLE t (k int PRIMARY KEY, v text); CREATE TABLE u (k int PRIMARY KEY, v text)";
    let env = env("ship_halt", ddl, &["public.t", "public.u"]).await;
    env.primary.batch_execute("INSERT INTO t VALUES (1, 'one'); INSERT INTO u VALUES (1, 'one')").await.expect("seed");
    let mut config = env.config();
    config.on_conflict = Arc::new(|t: &str| if t == "public.u" { OnConflict::Skip } else { OnConflict::Halt });
    let shipper = Shipper::start(config);
    env.converged(None, "t", &shipper).await;
    env.converged(None, "u", &shipper).await;
    // Someone changes both rows on the replica: the next updates find them different.
    env.replica.batch_execute("UPDATE t SET v = 'changed here'; UPDATE u SET v = 'changed here'").await.expect("diverge");
    env.primary.batch_execute("UPDATE t SET v = 'uno'; UPDATE u SET v = 'uno'; INSERT INTO u VALUES (2, 'two')").await.expect("writes");
    until("t halted", || shipper.stats().halted().contains_key("public.t")).await;
    let why = shipper.stats().halted()["public.t"].clone();
    assert!(why.contains("update_differs") && why.contains("public.t"), "{why}");
    // u skipped its conflict and goes on.
    until("u shipped", || shipper.stats().changes_by_table.lock().unwrap().get("public.u").copied().unwrap_or(0) >= 2).await;
    let u: Vec<String> = Env::rows(&env.replica, "u").await;
    assert_eq!(u, vec![r#"{"k":1,"v":"changed here"}"#, r#"{"k":2,"v":"two"}"#]);
    let conflicts = env.conflicts().await;
    assert_eq!(conflicts, vec![("public.u".into(), "update_differs".into(), "skipped".into())]);
    // Resumed: t is copied again and equals the primary.
    shipper.resume("public.t", PATIENCE).await.expect("resume");
    env.converged(None, "t", &shipper).await;
    until("t no longer halted", || shipper.stats().halted().is_empty()).await;
}

#[tokio::test]
async fn partitioned_replica_connections_drop_and_shipping_resumes_on_heal() {
    use capgate::sites::postgres::PgConnector;
    use capgate::sites::{Settings, Site, State, Thresholds};
    let env = env("ship_partition", KV, &["public.t"]).await;
    let addr = env.link.addr();
    let health_url = upstream_url(&format!("postgres://postgres@{}:{}/{}", addr.ip(), addr.port(), env.db));
    let settings = Settings {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(1),
        thresholds: Thresholds { partition_latency: Duration::from_millis(300), partition_after: 2, heal_after: 2 },
        pool_size: 1,
    };
    let site = Site::start("b", PgConnector::new(health_url), settings);
    let mut config = env.config();
    // Far longer than the test's patience: shipping must come back with the health view,
    // not when a deadline on a dead connection expires.
    config.deadline = Duration::from_secs(600);
    config.health = Some(site.health().clone());
    let shipper = Shipper::start(config);
    env.primary.batch_execute("INSERT INTO t VALUES (1, 'before')").await.expect("write");
    env.converged(None, "t", &shipper).await;

    env.link.blackhole();
    site.health().wait_state(State::Partitioned, PATIENCE).await.expect("partitioned");
    until("the shipper drops the replica", || shipper.stats().phase() == capgate::replicate::shipper::Phase::Partitioned).await;
    env.primary.batch_execute("INSERT INTO t SELECT g, 'during' FROM generate_series(2, 300) g").await.expect("writes during");
    env.link.restore();
    let healed = Instant::now();
    site.health().wait_for("not partitioned", PATIENCE, |s| s.state != State::Partitioned).await.expect("heals");
    let left = Instant::now();
    env.converged(None, "t", &shipper).await;
    eprintln!(
        "partition: health left partitioned {:?} after the link healed; backlog applied {:?} after that",
        left - healed,
        left.elapsed()
    );
    assert!(shipper.stats().last_error().is_none_or(|e| !e.contains("did not finish within")), "{:?}", shipper.stats().last_error());
}

/// An admin listener (as `capgate run` serves it) whose resume endpoint reaches `shippers`,
/// and a configuration file naming it, for the CLI.
async fn admin_for(env: &Env, shippers: Arc<std::collections::HashMap<String, Shipper>>) -> std::path::PathBuf {
    use capgate::admin::{serve, AdminState};
    use capgate::classify::{Catalog, Dialect};
    use capgate::policy::{Policy, PolicyHandle};
    let policy = Arc::new(PolicyHandle::fixed(Policy::default()));
    let router = Arc::new(capgate::replicate::Router::new(Dialect::Postgres, policy.clone(), Catalog::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("admin listener");
    let addr = listener.local_addr().expect("addr");
    let dir = std::env::temp_dir().join(format!("capgate-shipper-{}-{}", std::process::id(), env.db));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("capgate.toml");
    let text = format!(
        "site = \"a\"\nadmin = \"{addr}\"\n[primary]\nurl = \"{}?sslmode=disable\"\n[[replicas]]\nname = \"b\"\nurl = \"postgres://postgres@{}/{}?sslmode=disable\"\n",
        bed().a_primary().url("postgres", &env.db),
        env.link.addr(),
        env.db
    );
    std::fs::write(&file, &text).expect("config");
    let config = Arc::new(capgate::config::Config::parse(&text, &file).expect("config"));
    let state = AdminState::new(config, policy, router, Vec::new(), None, Box::new(|| 0)).with_resume(shippers);
    tokio::spawn(serve(listener, Arc::new(state)));
    file
}

async fn resume_cli(config: &Path, replica: &str, table: &str) -> std::process::Output {
    let (config, replica, table) = (config.to_owned(), replica.to_owned(), table.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_capgate"));
        cmd.arg("resume").arg("--config").arg(&config).args(["--replica", &replica, "--table", &table]);
        cmd.output().expect("capgate resume")
    })
    .await
    .expect("join")
}

/// Waits until the shipper has copied `table` (its later changes then ship as changes).
async fn copied(shipper: &Shipper, table: &str) {
    until("the initial copy", || shipper.stats().tables().get(table).is_some_and(|t| t.state == TableState::Copied)).await;
}

fn upstream_url(url: &str) -> Upstream {
    env::upstream(url)
}

#[tokio::test]
async fn lag_per_table_is_known_to_processes_that_do_not_ship() {
    use capgate::replicate::shipper::LagMonitor;
    let ddl = "CREATE TABLE t (k int PRIMARY KEY, v text); CREATE TABLE u (k int PRIMARY KEY, v text)";
    let env = env("ship_lag", ddl, &["public.t", "public.u"]).await;
    let replicas = vec!["b".to_owned()];
    // Another process's view: only the primary.
    let monitor = LagMonitor::start(
        env::upstream(&bed().a_primary().url("postgres", &env.db)),
        replicas.clone(),
        Duration::from_millis(50),
        Duration::from_secs(5),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(monitor.lag("b").is_none(), "unknown before the replica applied anything");
    assert_eq!(monitor.pending("public.t", &replicas), None);
    let shipper = Shipper::start(env.config());
    copied(&shipper, "public.u").await;
    copied(&shipper, "public.t").await;
    until("a first applied snapshot", || monitor.lag("b").is_some()).await;
    drop(shipper);
    env.primary
        .batch_execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 30) g; INSERT INTO u VALUES (1, 'y')")
        .await
        .expect("writes");
    until("pending figures", || monitor.pending("public.t", &replicas) == Some(30)).await;
    let lag = monitor.lag("b").expect("measured");
    assert_eq!((lag.pending_rows, lag.table("public.u").pending_rows), (31, 1));
    assert!(lag.table("public.t").seconds() >= 0.0 && lag.table("public.t").oldest_pending.is_some());
    let shipper = Shipper::start(env.config());
    env.converged(None, "t", &shipper).await;
    until("caught up", || monitor.pending("public.t", &replicas) == Some(0) && monitor.pending("public.u", &replicas) == Some(0)).await;
    assert_eq!(monitor.lag("b").map(|l| l.pending_rows), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_crashes_and_restarts_lose_and_duplicate_nothing() {
    use capgate::testbed::{PgOptions, PgServer};
    let env = env("ship_crash", KV, &["public.t"]).await;
    // A replica of its own: this test crashes it.
    let server = tokio::task::spawn_blocking(|| PgServer::start(PgOptions::default())).await.expect("join").expect("replica server");
    server.create_database("ship_crash").expect("replica db");
    client(&server.url("postgres", "ship_crash")).await.batch_execute(KV).await.expect("replica table");
    let link = Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()))).expect("link");
    let mut config = env.config();
    config.replica = env::upstream(&format!("postgres://postgres@{}/ship_crash", link.addr()));
    config.page_rows = 100;
    let shipper = Shipper::start(config);
    copied(&shipper, "public.t").await;
    let server = Arc::new(server);
    for round in 0..3 {
        // Counted before the round's writes: read after them, the shipper may already have
        // applied every one of them (it keeps up with a writer), and no further range would
        // ever come — the wait below then timed out under load.
        let before = shipper.stats().ranges.load(Ordering::Relaxed);
        for k in 0..300 {
            let key = round * 1000 + k;
            env.primary
                .batch_execute(&format!("INSERT INTO t VALUES ({key}, 'r{round}'); UPDATE t SET v = v || '+' WHERE k = {key}"))
                .await
                .expect("write");
        }
        until("shipping under way", || shipper.stats().ranges.load(Ordering::Relaxed) > before).await;
        // A crash (no checkpoint: crash recovery on restart) while ranges are being applied.
        let s = server.clone();
        tokio::task::spawn_blocking(move || {
            s.kill().expect("kill");
            s.restart().expect("restart");
        })
        .await
        .expect("join");
    }
    let replica = client(&server.url("postgres", "ship_crash")).await;
    env.converged(Some(&replica), "t", &shipper).await;
    let conflicts = replica.query("SELECT kind FROM capgate.conflicts", &[]).await.expect("conflicts");
    assert!(conflicts.is_empty(), "a change applied twice would be a conflict");
    assert!(shipper.stats().halted().is_empty());
    assert!(shipper.stats().retries.load(Ordering::Relaxed) >= 1, "the crashes were noticed");
}

/// A primary whose clients commit with `synchronous_commit = off` (the WAL writer flushes only
/// every 10 s here) is SIGKILLed right after the shipper applied a change: the change must
/// still be on the primary after its crash recovery. Shipping it before the primary's WAL held
/// it would leave the replica with a row the primary lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_crash_never_loses_a_change_the_replica_has() {
    use capgate::testbed::{PgOptions, PgServer};
    let env = env("ship_durable", KV, &[]).await;
    let conf = [("synchronous_commit", "off"), ("wal_writer_delay", "10s"), ("wal_writer_flush_after", "0")];
    let options = PgOptions { conf: conf.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..PgOptions::default() };
    let server = tokio::task::spawn_blocking(move || PgServer::start(options)).await.expect("join").expect("primary server");
    server.create_database("ship_durable").expect("primary db");
    let url = server.url("postgres", "ship_durable");
    let primary = client(&url).await;
    primary.batch_execute(KV).await.expect("primary table");
    install_primary(&primary).await.expect("install primary");
    primary.execute("SELECT capgate.install_capture('public.t'::regclass, 'async', 'public.t')", &[]).await.expect("capture");
    let mut config = env.config();
    config.primary = env::upstream(&url);
    let shipper = Shipper::start(config);
    copied(&shipper, "public.t").await;
    let server = Arc::new(server);
    for key in 1..=3 {
        let primary = client(&url).await;
        primary.batch_execute(&format!("INSERT INTO t VALUES ({key}, 'shipped')")).await.expect("write");
        let t = Instant::now();
        while Env::rows(&env.replica, "t").await.len() < key as usize {
            assert!(t.elapsed() < PATIENCE, "row {key} never reached the replica");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(primary);
        let s = server.clone();
        tokio::task::spawn_blocking(move || {
            s.kill().expect("kill");
            s.restart().expect("restart");
        })
        .await
        .expect("join");
        let after = Env::rows(&client(&url).await, "t").await;
        assert_eq!(after, Env::rows(&env.replica, "t").await, "after the primary's crash (round {key}): primary vs replica");
    }
}

#[tokio::test]
async fn a_sync_table_is_never_copied_even_when_it_becomes_async() {
    let env = env("ship_sync_async", KV, &[]).await;
    env.primary.execute("SELECT capgate.install_capture('public.t'::regclass, 'sync', 'public.t')", &[]).await.expect("sync capture");
    // A row only the replica has: a copy would remove it.
    env.replica.batch_execute("INSERT INTO t VALUES (99, 'only here')").await.expect("replica row");
    let shipper = Shipper::start(env.config());
    copied(&shipper, "public.t").await;
    // The policy moves the table to async: still no copy, and its changes ship.
    env.capture("public.t").await;
    env.primary.batch_execute("INSERT INTO t VALUES (1, 'async now')").await.expect("write");
    until("the write shipped", || shipper.stats().changes_by_table.lock().unwrap().get("public.t").copied().unwrap_or(0) >= 1).await;
    let rows = Env::rows(&env.replica, "t").await;
    assert_eq!(rows, vec![r#"{"k":1,"v":"async now"}"#, r#"{"k":99,"v":"only here"}"#]);
}

#[tokio::test]
async fn a_fleet_from_the_configuration_follows_the_policy() {
    use capgate::policy::{Policy, PolicyHandle};
    use capgate::replicate::shipper::Fleet;
    let env = env("ship_fleet", KV, &["public.t"]).await;
    let text = format!(
        "site = \"a\"\n[primary]\nurl = \"{}?sslmode=disable\"\n[[replicas]]\nname = \"b\"\nurl = \"postgres://postgres@{}/{}?sslmode=disable\"\n",
        bed().a_primary().url("postgres", &env.db),
        env.link.addr(),
        env.db
    );
    let config = capgate::config::Config::parse(&text, Path::new("/tmp/capgate-fleet.toml")).expect("config");
    let policy =
        Policy::parse("[[table]]\nmatch = \"public.t\"\nmode = \"async\"\non_conflict = \"skip\"\n", Path::new("p.toml")).expect("policy");
    let fleet = Fleet::start(&config, Arc::new(PolicyHandle::fixed(policy)), |_| None, Duration::from_secs(5)).expect("fleet");
    env.primary.batch_execute("INSERT INTO t VALUES (1, 'one')").await.expect("write");
    env.converged(None, "t", &fleet.shippers["b"]).await;
    env.replica.batch_execute("UPDATE t SET v = 'here'").await.expect("diverge");
    env.primary.batch_execute("UPDATE t SET v = 'uno'; INSERT INTO t VALUES (2, 'two')").await.expect("writes");
    let t = Instant::now();
    while Env::rows(&env.replica, "t").await != vec![r#"{"k":1,"v":"here"}"#, r#"{"k":2,"v":"two"}"#] {
        assert!(t.elapsed() < PATIENCE, "the second insert never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.conflicts().await, vec![("public.t".into(), "update_differs".into(), "skipped".into())], "the policy's skip");
    until("nothing pending", || fleet.pending("public.t") == Some(0)).await;
    // What /status and /metrics show of it.
    let doc = capgate::admin::shipping::shipping_doc(&fleet, "b");
    assert_eq!((doc.phase, doc.leader, doc.conflicts, doc.pending_rows), ("running", true, 1, Some(0)), "{doc:?}");
    let t = doc.tables.iter().find(|t| t.table == "public.t").expect("the table in /status");
    // The first insert was in the initial copy or shipped, depending on which came first.
    assert!(t.state == "copied" && t.changes >= 2 && t.pending_rows == Some(0), "{t:?}");
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || capgate::admin::shipping::fleet_metrics(&fleet));
    let text = handle.render();
    assert!(text.contains(&format!("capgate_shipped_changes_total{{replica=\"b\"}} {}", doc.changes)), "{text}");
    assert!(text.contains("capgate_conflicts_total{replica=\"b\",table=\"public.t\",kind=\"update_differs\"} 1"), "{text}");
    assert!(text.contains("capgate_replica_pending_rows{replica=\"b\",table=\"public.t\"} 0"), "{text}");
}

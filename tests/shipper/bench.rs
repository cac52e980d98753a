//! The drain-rate measurement behind docs/performance.md (ignored: run by hand, or by
//! benches/drain.sh): a backlog of single-row transactions drained through the link with
//! 25 ms added each way (50 ms round trip), and without added latency, in the same run.

use super::*;

/// `cargo test --release --test shipper -- --ignored --nocapture measure_drain`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_drain() {
    let backlog: usize = std::env::var("CAPGATE_DRAIN_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    for (name, latency) in [("loopback", Duration::ZERO), ("50 ms RTT", Duration::from_millis(25))] {
        let db = format!("drain_{}", latency.as_millis());
        let env = env(&db, "CREATE TABLE acct (k int PRIMARY KEY, bal bigint, note text)", &["public.acct"]).await;
        // The table is copied while empty; every change after that is a queued transaction.
        let shipper = Shipper::start(env.config());
        until("the copy", || shipper.stats().tables().get("public.acct").is_some_and(|t| t.state == TableState::Copied)).await;
        drop(shipper);
        // Single-row transactions from 4 clients, as an OLTP backlog.
        let mut tasks = Vec::new();
        for c in 0..4 {
            let url = bed().a_primary().url("postgres", &db);
            tasks.push(tokio::spawn(async move {
                let client = client(&url).await;
                let stmt = client.prepare("INSERT INTO acct VALUES ($1, $2, 'queued')").await.expect("prepare");
                for i in (c..backlog).step_by(4) {
                    client.execute(&stmt, &[&(i as i32), &(i as i64)]).await.expect("insert");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        env.link.set_latency(latency);
        let mut config = env.config();
        config.deadline = Duration::from_secs(120);
        let started = Instant::now();
        let shipper = Shipper::start(config);
        env.converged(None, "acct", &shipper).await;
        let elapsed = started.elapsed();
        let stats = shipper.stats();
        let (changes, batches, ranges) =
            (stats.changes.load(Ordering::Relaxed), stats.batches.load(Ordering::Relaxed), stats.ranges.load(Ordering::Relaxed));
        println!(
            "drain {name} (single-row inserts): {changes} row changes in {:.2} s = {:.0} changes/s; {batches} replica round trips with changes \
             ({:.0} changes per round trip) in {ranges} ranges",
            elapsed.as_secs_f64(),
            changes as f64 / elapsed.as_secs_f64(),
            changes as f64 / batches.max(1) as f64
        );
    }
}

/// The same with a TPC-B-like backlog: each transaction updates an account, a teller and
/// the one branch and inserts a history row (the branch and teller rows repeat in every page,
/// so their runs go row by row). `cargo test --test shipper -- --ignored --nocapture measure_drain_tpcb`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_drain_tpcb() {
    let txns: usize = std::env::var("CAPGATE_DRAIN_TXNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let ddl = "CREATE TABLE acct (aid int PRIMARY KEY, bal bigint, filler char(84));
               CREATE TABLE teller (tid int PRIMARY KEY, bal bigint, filler char(84));
               CREATE TABLE branch (bid int PRIMARY KEY, bal bigint, filler char(88));
               CREATE TABLE hist (id bigserial PRIMARY KEY, aid int, tid int, bid int, delta int, at timestamptz DEFAULT now());
               INSERT INTO acct SELECT g, 0, '' FROM generate_series(1, 100000) g;
               INSERT INTO teller SELECT g, 0, '' FROM generate_series(1, 10) g;
               INSERT INTO branch VALUES (1, 0, '')";
    for (name, latency) in [("loopback", Duration::ZERO), ("50 ms RTT", Duration::from_millis(25))] {
        let db = format!("tpcb_{}", latency.as_millis());
        let env = env(&db, ddl, &["public.acct", "public.teller", "public.branch", "public.hist"]).await;
        let shipper = Shipper::start(env.config());
        for t in ["public.acct", "public.teller", "public.branch", "public.hist"] {
            until("the copy", || shipper.stats().tables().get(t).is_some_and(|s| s.state == TableState::Copied)).await;
        }
        drop(shipper);
        let mut tasks = Vec::new();
        for c in 0..4usize {
            let url = bed().a_primary().url("postgres", &db);
            tasks.push(tokio::spawn(async move {
                let client = client(&url).await;
                for i in (c..txns).step_by(4) {
                    let (aid, tid, delta) = ((i * 7919) % 100_000 + 1, i % 10 + 1, (i % 1000) as i32 - 500);
                    client
                        .batch_execute(&format!(
                            "BEGIN; UPDATE acct SET bal = bal + {delta} WHERE aid = {aid}; UPDATE teller SET bal = bal + {delta} WHERE tid = {tid}; \
                             UPDATE branch SET bal = bal + {delta} WHERE bid = 1; INSERT INTO hist (aid, tid, bid, delta) VALUES ({aid}, {tid}, 1, {delta}); COMMIT"
                        ))
                        .await
                        .expect("txn");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        env.link.set_latency(latency);
        let mut config = env.config();
        config.deadline = Duration::from_secs(120);
        let started = Instant::now();
        let shipper = Shipper::start(config);
        for t in ["acct", "teller", "branch", "hist"] {
            env.converged(None, t, &shipper).await;
        }
        let elapsed = started.elapsed();
        let stats = shipper.stats();
        let (changes, batches) = (stats.changes.load(Ordering::Relaxed), stats.batches.load(Ordering::Relaxed));
        println!(
            "drain {name} (TPC-B-like, {txns} transactions): {changes} row changes in {:.2} s = {:.0} changes/s, {:.0} transactions/s; \
             {batches} replica round trips with changes ({:.0} changes per round trip)",
            elapsed.as_secs_f64(),
            changes as f64 / elapsed.as_secs_f64(),
            txns as f64 / elapsed.as_secs_f64(),
            changes as f64 / batches.max(1) as f64
        );
    }
}

/// The same with the chaos suite's mix (tests/chaos/workload.rs): in each of two tables,
/// single-row inserts with the client's own keys, increments of two hot rows, and
/// transactions that insert, increment and insert again, interleaved by 4 clients: the
/// operations of one table alternate within every page.
/// `cargo test --test shipper -- --ignored --nocapture measure_drain_mixed`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_drain_mixed() {
    let ops: usize = std::env::var("CAPGATE_DRAIN_TXNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let ddl = "CREATE TABLE m1 (id bigint PRIMARY KEY, client int, v bigint NOT NULL DEFAULT 0);
               CREATE TABLE m2 (id bigint PRIMARY KEY, client int, v bigint NOT NULL DEFAULT 0);
               INSERT INTO m1 (id) VALUES (1), (2); INSERT INTO m2 (id) VALUES (1), (2)";
    let tables = ["public.m1", "public.m2"];
    let db = "mixed";
    let env = env(db, ddl, &tables).await;
    let shipper = Shipper::start(env.config());
    for t in tables {
        until("the copy", || shipper.stats().tables().get(t).is_some_and(|s| s.state == TableState::Copied)).await;
    }
    drop(shipper);
    let mut tasks = Vec::new();
    for c in 0..4usize {
        let url = bed().a_primary().url("postgres", db);
        tasks.push(tokio::spawn(async move {
            let client = client(&url).await;
            let mut next = (c as i64 + 1) * 1_000_000_000;
            for i in (c..ops).step_by(4) {
                let (table, hot) = (["m1", "m2"][i % 2], (i / 2) % 2 + 1);
                next += 2;
                let sql = match (i / 4) % 4 {
                    0 | 1 => format!("INSERT INTO {table} (id, client) VALUES ({next}, {c})"),
                    2 => format!("UPDATE {table} SET v = v + 1 WHERE id = {hot}"),
                    _ => format!(
                        "BEGIN; INSERT INTO {table} (id, client) VALUES ({next}, {c}); UPDATE {table} SET v = v + 1 WHERE id = {hot}; \
                         INSERT INTO {table} (id, client) VALUES ({}, {c}); COMMIT",
                        next + 1
                    ),
                };
                client.batch_execute(&sql).await.expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut config = env.config();
    config.deadline = Duration::from_secs(120);
    let started = Instant::now();
    let shipper = Shipper::start(config);
    for t in ["m1", "m2"] {
        env.converged(None, t, &shipper).await;
    }
    let elapsed = started.elapsed();
    let stats = shipper.stats();
    let (changes, batches) = (stats.changes.load(Ordering::Relaxed), stats.batches.load(Ordering::Relaxed));
    println!(
        "drain loopback (mixed, {ops} operations): {changes} row changes in {:.2} s = {:.0} changes/s; \
         {batches} replica round trips with changes ({:.0} changes per round trip)",
        elapsed.as_secs_f64(),
        changes as f64 / elapsed.as_secs_f64(),
        changes as f64 / batches.max(1) as f64
    );
}

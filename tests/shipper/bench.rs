//! The commit-order cost measurement behind docs/decisions/0007 (ignored: run by hand).

use super::*;

/// The figures of docs/decisions/0006: concurrent autocommit inserts on a throwaway server
/// (fsync on), directly, with an outbox row but no ordering step, and with the ordering
/// step (the counter row). Run with `cargo test --test shipper -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_commit_order_cost() {
    let server = capgate::testbed::PgServer::start(capgate::testbed::PgOptions::default()).expect("server");
    let url = server.superuser_url();
    let setup = client(&url).await;
    schema::install_primary(&setup).await.expect("install");
    setup.batch_execute("CREATE TABLE bench (id bigserial PRIMARY KEY, v int)").await.expect("table");
    let capture = Capture {
        origin: "a".into(),
        statement: "INSERT INTO bench (v) VALUES ($1)".into(),
        params: vec![Param { type_oid: 23, format: ParamFormat::Text, value: Some(b"1".to_vec()) }],
        settings: vec![("search_path".into(), "public".into())],
        tables: vec!["public.bench".into()],
        row_count: Some(1),
    };
    let with_row = format!("BEGIN; INSERT INTO bench (v) VALUES (1); {}; COMMIT", capture.insert_sql());
    let ordered = format!("BEGIN; INSERT INTO bench (v) VALUES (1); {}; {}; COMMIT", capture.insert_sql(), capture::ORDER_SQL);
    setup.batch_execute("CREATE SEQUENCE bench_seq").await.expect("seq");
    let advisory = format!(
        "BEGIN; INSERT INTO bench (v) VALUES (1); {}; SELECT pg_advisory_xact_lock(42); \
         UPDATE capgate.outbox SET seq = s.n, committed_at = clock_timestamp() FROM (SELECT nextval('bench_seq') AS n) s \
         WHERE xid = pg_current_xact_id() AND seq IS NULL; COMMIT",
        capture.insert_sql()
    );
    let modes = [
        ("direct", "BEGIN; INSERT INTO bench (v) VALUES (1); COMMIT".to_owned()),
        ("outbox row, no ordering", with_row),
        ("outbox row + counter (a)", ordered),
        ("outbox row + advisory lock", advisory),
    ];
    for clients in [1usize, 8, 32] {
        setup.batch_execute("CHECKPOINT").await.expect("checkpoint");
        for (name, sql) in &modes {
            let sql = std::sync::Arc::new(sql.clone());
            let stop = Instant::now() + Duration::from_secs(5);
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (sql, url) = (sql.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let c = client(&url).await;
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        c.batch_execute(&sql).await.expect("tx");
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("task");
            }
            eprintln!("{clients:>3} clients  {name:<26} {:>8.0} commits/s", total as f64 / 5.0);
        }
    }
}

/// Drain rate of a backlog through a link with 25 ms each way (50 ms round trip): statements
/// per second and per round trip (batch). Run with
/// `cargo test --test shipper -- --ignored --nocapture measure_drain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_drain_rate() {
    let env = env("ship_drain").await;
    env.link.set_latency(Duration::from_millis(25));
    let n = 20_000;
    let mut sql = String::new();
    for k in 0..n {
        let c = env.capture(
            &format!("INSERT INTO {} (k, v) VALUES (CAST($1 AS int), $2)", env.table),
            &[Some(&k.to_string()), Some("some value")],
            1,
        );
        sql.push_str(&format!(
            "BEGIN; INSERT INTO {} VALUES ({k}, 'some value'); {}; {}; COMMIT;\n",
            env.table,
            c.insert_sql(),
            capture::ORDER_SQL
        ));
        if k % 500 == 499 {
            env.primary.batch_execute(&sql).await.expect("queue");
            sql.clear();
        }
    }
    let started = Instant::now();
    let shipper = Shipper::start(env.config("b"));
    env.caught_up(&shipper).await;
    let secs = started.elapsed().as_secs_f64();
    let batches = shipper.stats().batches.load(Ordering::Relaxed);
    eprintln!(
        "drained {n} statements in {secs:.2} s through a 50 ms round trip: {:.0} statements/s, {batches} batches, {:.0} statements per round trip",
        n as f64 / secs,
        n as f64 / batches as f64
    );
    assert_eq!(env.count(&env.replica).await, n as i64);
}

//! Pruning a MySQL origin's change log under a steady load: applied changes past the
//! retention leave `capgate.changes` while writers never pause. The shipper used to prune
//! only when a read came back empty — under a steady load it never did, and `capgate.changes`
//! grew without bound — and at most one chunk of 10,000 changes a minute.
//!
//! Driven on the shipper itself (retention zero, a short prune interval), against MariaDB
//! servers of its own: a writer inserts change rows as capture triggers would, in a tight
//! loop, so every read of the shipper (one per `ship_interval`) finds changes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capgate::config::DbUrl;
use capgate::replicate::shipper::mysql::{start, MyShipperConfig};
use capgate::store::mysql::primary;
use capgate::testbed::{MariaDb, MariaDbOptions};
use mysql_async::prelude::*;

/// Changes the writer inserts per statement.
const ROWS_PER_INSERT: u64 = 50;

#[tokio::test(flavor = "multi_thread")]
async fn applied_changes_are_pruned_while_writes_never_pause() {
    let (origin, replica) =
        (MariaDb::start(MariaDbOptions::default()).expect("MariaDB"), MariaDb::start(MariaDbOptions::default()).expect("MariaDB"));
    for db in [&origin, &replica] {
        db.sql("CREATE DATABASE prunedb; CREATE TABLE prunedb.t (id BIGINT PRIMARY KEY)").expect("table");
    }
    let url = origin.url("capgate", "");
    let mut conn = mysql_async::Conn::from_url(url.as_str()).await.expect("connect");
    primary::install(&mut conn).await.expect("install capgate's database");

    // The writer: change rows as the capture triggers write them, without a pause.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, url) = (stop.clone(), written.clone(), url.clone());
        tokio::spawn(async move {
            let mut w = mysql_async::Conn::from_url(url.as_str()).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let first = written.load(Ordering::Relaxed) + 1;
                let values: Vec<String> = (first..first + ROWS_PER_INSERT)
                    .map(|id| format!("(CONNECTION_ID(), UTC_TIMESTAMP(6), 'prunedb.t', 'I', '{{\"id\": {id}}}', 0)"))
                    .collect();
                w.query_drop(format!("INSERT INTO capgate.changes (conn, at, tbl, op, new_image, proxied) VALUES {}", values.join(", ")))
                    .await
                    .expect("insert changes");
                written.fetch_add(ROWS_PER_INSERT, Ordering::Relaxed);
            }
        })
    };
    while written.load(Ordering::Relaxed) < 2_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let parse = |u: String| DbUrl::parse(&u, Path::new(".")).expect("url");
    let mut config = MyShipperConfig::new("west", "east", parse(url.clone()), parse(replica.url("capgate", "")));
    config.retention = Duration::ZERO;
    config.prune_interval = Duration::from_millis(200);
    // As capgate runs a replica by default (decision 0037): a read at most every 200 ms, each
    // of which finds what the writer committed meanwhile.
    config.ship_interval = Duration::from_millis(200);
    let shipper = start(config);

    // While the writer goes on, the oldest change kept moves past what the replica applied.
    let oldest = "SELECT COALESCE(MIN(seq), 0) FROM capgate.changes";
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let min: u64 = conn.query_first(oldest).await.expect("oldest").unwrap_or(0);
        let applied: u64 = replica.sql("SELECT COUNT(*) FROM prunedb.t").expect("count").parse().expect("number");
        if min > 5_000 && applied > 5_000 {
            break;
        }
        assert!(!writer.is_finished(), "the writer stopped");
        assert!(
            Instant::now() < deadline,
            "nothing pruned under a steady load: oldest change kept {min}, {applied} applied, {} written",
            written.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let total = written.load(Ordering::Relaxed);

    // Everything written reaches the replica once, and leaves the primary's change log.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = replica.sql("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM prunedb.t").expect("count");
        let kept: u64 = conn.query_first("SELECT COUNT(*) FROM capgate.changes").await.expect("kept").unwrap_or(0);
        if applied == format!("{total}\t{total}") && kept == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "replica {applied} of {total}, {kept} changes kept on the primary");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(shipper);
}

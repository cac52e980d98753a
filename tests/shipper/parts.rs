//! A long range is committed on the replica in parts (decision 0022): a backlog of many small
//! transactions, shipped while the replica link is reset and the shipper killed again and
//! again, arrives in steps that the faults do not undo, each step made of whole primary
//! transactions, and ends exactly once.

use super::*;

/// Rows each primary transaction writes.
const ROWS_PER_TXN: i64 = 7;

/// What the replica holds, read in one snapshot: its rows, the transactions found there with
/// only some of their rows, and its position for origin `a`: (A, B of the range under way,
/// the last seq of it applied).
struct Seen {
    rows: i64,
    torn: i64,
    snapshot: Option<String>,
    target: Option<String>,
    seq: Option<i64>,
}

async fn seen(replica: &Client) -> Seen {
    let sql = format!(
        "SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM (SELECT txn FROM w GROUP BY txn HAVING count(*) <> {ROWS_PER_TXN}) x), \
         a.snapshot::text, a.target::text, a.seq FROM (SELECT 1) AS one LEFT JOIN capgate.applied a ON a.origin = 'a'"
    );
    let r = replica.query_one(&sql, &[]).await.expect("replica state");
    Seen { rows: r.get(0), torn: r.get(1), snapshot: r.get(2), target: r.get(3), seq: r.get(4) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_ships_in_whole_transactions_across_faults() {
    let env = env("ship_parts", "CREATE TABLE w (txn int, n int, PRIMARY KEY (txn, n))", &["public.w"]).await;
    let mut config = env.config();
    config.page_rows = 150;
    config.part_changes = 200;
    // Prune after every range, without retention: what is pruned while a range goes on in
    // parts, across faults, must be only what every replica has applied (a change pruned
    // too early would be a row missing below). How much is pruned depends on the oldest
    // transaction of the whole cluster (snapshots' xmin), which other tests hold back.
    config.retention = Duration::ZERO;
    config.prune_interval = Duration::ZERO;
    let shipper = Shipper::start(config.clone());
    copied(&shipper, "public.w").await;
    drop(shipper);

    // The backlog, while no shipper runs: 4 writers at once (their transactions' changes
    // interleave in seq), each committing 750 transactions of 7 rows, one row per statement.
    let mut writers = Vec::new();
    for w in 0..4 {
        let url = bed().a_primary().url("postgres", &env.db);
        writers.push(tokio::spawn(async move {
            let c = client(&url).await;
            c.batch_execute(&format!(
                "DO $$ BEGIN FOR i IN {from}..{to} LOOP FOR n IN 1..{ROWS_PER_TXN} LOOP INSERT INTO w VALUES (i, n); END LOOP; COMMIT; END LOOP; END $$",
                from = w * 1000,
                to = w * 1000 + 749
            ))
            .await
            .expect("backlog");
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let total = 4 * 750 * ROWS_PER_TXN;

    // Ship, and after every step the replica commits, a fault: the link reset under the
    // shipper, or the shipper killed and a new one started.
    let mut shipper = Shipper::start(config.clone());
    let (mut rows, mut steps, mut parts_seen) = (0i64, 0u32, 0u32);
    // The range under way and its last seq, as last seen.
    let mut last: (Option<String>, Option<i64>) = (None, None);
    while rows < total {
        let t = Instant::now();
        let now = loop {
            let now = seen(&env.replica).await;
            if now.rows != rows {
                break now;
            }
            assert!(
                t.elapsed() < PATIENCE,
                "no progress after {steps} steps at {rows} of {total} rows: {:?}",
                shipper.stats().last_error()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(now.torn, 0, "transactions split on the replica after {steps} steps ({} rows)", now.rows);
        assert!(now.rows > rows, "the replica lost rows it had committed: {rows} -> {}", now.rows);
        rows = now.rows;
        steps += 1;
        if now.target.is_some() {
            parts_seen += 1;
            if now.target == last.0 {
                assert!(now.seq > last.1, "the position of a range under way went from {:?} to {:?}", last.1, now.seq);
            }
            last = (now.target.clone(), now.seq);
        }
        if rows < total {
            if steps % 2 == 0 {
                env.link.reset();
            } else {
                drop(shipper);
                shipper = Shipper::start(config.clone());
            }
        }
    }
    // Before parts, the backlog was one range: it arrived in one step (or never, under
    // faults that come faster than it can be applied).
    eprintln!("backlog of {total} changes: {steps} steps, a range under way seen {parts_seen} time(s)");
    assert!(steps >= 5, "the backlog arrived in {steps} step(s)");
    assert!(parts_seen >= 3, "a range under way was seen {parts_seen} time(s) on the replica");
    env.converged(None, "w", &shipper).await;
    env.verify(&["public.w"]).await;
    // A change applied twice would be an insert_exists conflict (which halts by default).
    assert!(env.conflicts().await.is_empty(), "{:?}", env.conflicts().await);
    assert!(shipper.stats().halted().is_empty());
    // The last rows came with the range's last part, which ended it.
    let end = seen(&env.replica).await;
    assert!(end.snapshot.is_some() && end.target.is_none() && end.seq.is_none(), "{:?} {:?} {:?}", end.snapshot, end.target, end.seq);
}

//! Holes in a MySQL origin's change numbers (decision 0021): a number taken by a transaction
//! that is still open when a batch is read is looked for again until its row shows up, and is
//! dropped only once it never can. The race this guards: the transaction commits *after* the
//! batch that missed its row was read but *before* the shipper lists the open transactions —
//! the listing no longer shows it, yet its row is there to ship; and an XA branch prepared on
//! the primary and left there across a restart, which InnoDB stamps with the restart's time.
//! Driven step by step on the shipper's own reads, against a MariaDB of its own (nothing else
//! writes its change log).

use std::time::Duration;

use capgate::store::mysql::position::{Position, HOLE_SETTLE_SECS};
use capgate::store::mysql::{primary, ship};
use capgate::testbed::{MariaDb, MariaDbOptions};
use mysql_async::prelude::*;

const CHANGE: &str = "INSERT INTO capgate.changes (conn, at, tbl, op, new_image, proxied) \
                      VALUES (CONNECTION_ID(), NOW(6), 'holedb.t', 'I', '{}', 0)";

/// Takes the next change number in an open transaction, then commits one after it in
/// autocommit; reads a batch as the shipper does; returns the position after it and the
/// still-open connection.
async fn hole_behind_a_batch(url: &str, shipper: &mut mysql_async::Conn, from: &Position) -> (Position, u64, mysql_async::Conn) {
    let mut open = mysql_async::Conn::from_url(url).await.expect("connect");
    open.query_drop("START TRANSACTION").await.expect("begin");
    open.query_drop(CHANGE).await.expect("insert in the open transaction");
    let hole: u64 = open.query_first("SELECT LAST_INSERT_ID()").await.expect("id").expect("row");
    let mut quick = mysql_async::Conn::from_url(url).await.expect("connect");
    quick.query_drop(CHANGE).await.expect("autocommit insert");
    let batch = ship::read_batch(shipper, None, from, 100).await.expect("read a batch");
    let seqs: Vec<u64> = batch.changes.iter().map(|s| s.change.seq).collect();
    assert_eq!(seqs, [hole + 1], "the batch sees the committed change only");
    let pos = from.after(&seqs, batch.seen);
    assert!(pos.holes.contains_key(&hole), "{pos:?}");
    (pos, hole, open)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hole_is_dropped_only_once_no_transaction_can_still_fill_it() {
    let db = MariaDb::start(MariaDbOptions::default()).expect("MariaDB");
    let url = format!("mysql://capgate@127.0.0.1:{}/", db.port());
    let mut shipper = mysql_async::Conn::from_url(url.as_str()).await.expect("connect");
    primary::install(&mut shipper).await.expect("install capgate's database");
    ship::prepare_primary(&mut shipper).await.expect("prepare");
    let settle = Duration::from_secs_f64(HOLE_SETTLE_SECS + 0.2);

    // Committed late: after the batch that missed it, before the shipper looks at open transactions.
    let (pos, hole, mut open) = hole_behind_a_batch(&url, &mut shipper, &Position::default()).await;
    tokio::time::sleep(settle).await;
    assert_eq!(ship::settled_holes(&mut shipper, &pos).await.expect("settle"), Vec::<u64>::new(), "its transaction is open");
    open.query_drop("COMMIT").await.expect("commit");
    // INNODB_TRX is a cache refreshed at most every 0.1 s: let it forget the transaction.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ship::settled_holes(&mut shipper, &pos).await.expect("settle"),
        Vec::<u64>::new(),
        "seq {hole} committed after the batch was read: dropping it would lose its row"
    );
    let next = ship::read_batch(&mut shipper, None, &pos, 100).await.expect("read");
    assert_eq!(next.changes.iter().map(|s| s.change.seq).collect::<Vec<_>>(), [hole], "the next batch ships it");
    let pos = pos.after(&[hole], next.seen);
    assert!(pos.holes.is_empty(), "{pos:?}");

    // Rolled back: nothing will ever fill it, and it is dropped once settled.
    let (pos, hole, mut open) = hole_behind_a_batch(&url, &mut shipper, &pos).await;
    open.query_drop("ROLLBACK").await.expect("rollback");
    drop(open);
    tokio::time::sleep(settle).await;
    assert_eq!(ship::settled_holes(&mut shipper, &pos).await.expect("settle"), [hole], "a rolled-back number is settled");

    // An XA branch prepared on the primary by some other transaction manager, left by its
    // session, across a restart of the primary: InnoDB stamps the recovered transaction with
    // the restart's time, later than the hole — the listing alone would call it settled.
    let mut xa = mysql_async::Conn::from_url(url.as_str()).await.expect("connect");
    xa.query_drop("XA START 'holes-tm'").await.expect("xa start");
    xa.query_drop(CHANGE).await.expect("insert in the branch");
    let hole: u64 = xa.query_first("SELECT LAST_INSERT_ID()").await.expect("id").expect("row");
    xa.query_drop("XA END 'holes-tm'").await.expect("xa end");
    xa.query_drop("XA PREPARE 'holes-tm'").await.expect("xa prepare");
    drop(xa);
    let mut quick = mysql_async::Conn::from_url(url.as_str()).await.expect("connect");
    quick.query_drop(CHANGE).await.expect("autocommit insert");
    drop(quick);
    let read = ship::read_batch(&mut shipper, None, &pos, 100).await.expect("read");
    let seqs: Vec<u64> = read.changes.iter().map(|s| s.change.seq).collect();
    assert_eq!(seqs, [hole + 1]);
    let pos = pos.after(&seqs, read.seen);
    drop(shipper);
    let db = tokio::task::spawn_blocking(move || {
        db.stop().expect("stop the primary");
        std::thread::sleep(Duration::from_millis(1200));
        db.restart().expect("restart the primary");
        db
    })
    .await
    .expect("join");
    let mut shipper = mysql_async::Conn::from_url(url.as_str()).await.expect("reconnect");
    ship::prepare_primary(&mut shipper).await.expect("prepare");
    tokio::time::sleep(settle).await;
    assert_eq!(
        ship::settled_holes(&mut shipper, &pos).await.expect("settle"),
        Vec::<u64>::new(),
        "seq {hole} belongs to a prepared XA branch the restart left: it may still commit"
    );
    shipper.query_drop("XA COMMIT 'holes-tm'").await.expect("the transaction manager commits");
    let next = ship::read_batch(&mut shipper, None, &pos, 100).await.expect("read");
    assert_eq!(next.changes.iter().map(|s| s.change.seq).collect::<Vec<_>>(), [hole], "and its row ships");
    drop(db);
}

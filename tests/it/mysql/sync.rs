//! Sync commits over XA between two real MariaDB servers (decision 0016), driven by
//! `replicate::coordinator::SyncCommit` through `frontend::mysql::sync::commit`: committed on
//! both or on neither; a replica whose rows differ refuses with CGC01 and nothing commits; an
//! unreachable replica refuses; recovery resolves branches left between XA PREPARE and the
//! primary COMMIT (rolled back) and between the primary COMMIT and XA COMMIT (committed), and
//! leaves a live connection's branch to it for a round; a session's next commit does not wait
//! for the previous one's XA COMMIT.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capgate::config::DbUrl;
use capgate::frontend::mysql::sync::{self, Outcome, PrimaryTx, ReplicaSlot};
use capgate::policy::Policy;
use capgate::store::mysql::apply::{self, Change};
use capgate::store::mysql::{capture, primary as store, xa};
use capgate::testbed::link::Link;
use mysql_async::prelude::*;

use super::support::{connect, primary, replica, url_at, APP_PASSWORD};

/// The tests reconcile the shared primary's triggers; they take turns with the capture tests.
use super::capture::SERVER;

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"cgsync.*\"\nmode = \"sync\"\n";
const TIMEOUT: Duration = Duration::from_secs(10);

fn gid() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}{}:{}", capgate::replicate::recovery::site_prefix("test"), std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A capgate client session's primary transaction, on a driver connection.
struct Session(mysql_async::Conn);

impl PrimaryTx for Session {
    async fn read_changes(&mut self, gid: &str, origin: &str) -> Result<Vec<Change>, String> {
        store::read_sync_changes(&mut self.0, gid, origin).await.map_err(|e| e.to_string())
    }
    async fn commit(&mut self) -> Option<bool> {
        match self.0.query_drop("COMMIT").await {
            Ok(()) => Some(true),
            Err(mysql_async::Error::Server(_)) => Some(false),
            Err(_) => None,
        }
    }
    async fn rollback(&mut self) {
        let _ = self.0.query_drop("ROLLBACK").await;
    }
}

async fn session() -> Session {
    let mut c = connect(&url_at(primary().port(), "app", Some(APP_PASSWORD), "cgsync")).await;
    c.query_drop(store::SESSION_MARKER).await.expect("marker");
    c.query_drop("BEGIN").await.expect("begin");
    Session(c)
}

fn replica_url(port: u16) -> DbUrl {
    DbUrl::parse(&format!("mysql://capgate@127.0.0.1:{port}/?sslmode=disable"), Path::new(".")).expect("url")
}

fn slot(port: u16) -> Arc<ReplicaSlot> {
    Arc::new(ReplicaSlot::new("east".into(), replica_url(port)))
}

/// Fresh `cgsync.acct` on both servers with the same rows, capture installed.
pub(super) async fn setup() -> (Policy, mysql_async::Conn) {
    // A refused commit's branch stays prepared until capgate's recovery resolves it; a test
    // that ended first (its capgate gone) leaves it holding its locks, and the DROP below
    // would wait on them (ERROR 1205) in every later test. Every caller holds SERVER.
    for db in [primary(), replica()] {
        for line in db.sql("XA RECOVER").expect("xa recover").lines() {
            if let [format, gtrid, bqual, data] = line.split('\t').collect::<Vec<_>>()[..] {
                let (g, b): (usize, usize) = (gtrid.parse().expect("gtrid length"), bqual.parse().expect("bqual length"));
                let hex = |bytes: &[u8]| bytes.iter().map(|x| format!("{x:02x}")).collect::<String>();
                let data = data.as_bytes();
                let xid = format!("X'{}', X'{}', {format}", hex(&data[..g]), hex(&data[g..g + b]));
                db.sql(&format!("XA ROLLBACK {xid}")).expect("roll back a leftover branch");
            }
        }
    }
    let ddl = "DROP DATABASE IF EXISTS cgsync; CREATE DATABASE cgsync; \
               CREATE TABLE cgsync.acct (id INT PRIMARY KEY, bal INT NOT NULL, note VARCHAR(20)); \
               INSERT INTO cgsync.acct VALUES (1, 100, 'a'), (2, 200, 'b')";
    primary().sql(ddl).expect("primary");
    replica().sql(ddl).expect("replica");
    let policy = Policy::parse(POLICY, Path::new("policy.toml")).expect("policy");
    let mut admin = connect(&url_at(primary().port(), "capgate", None, "")).await;
    store::install(&mut admin).await.expect("schema");
    // The shared primary's change log starts empty: a proxy whose policy has an async rule
    // ships it to the shared replica, and earlier tests' changes (sync tables written around
    // capgate among them) must not reach the replica's rows in the middle of this test.
    admin.query_drop("DELETE FROM capgate.changes").await.expect("empty the change log");
    let done = capture::reconcile(&mut admin, &policy).await.expect("reconcile");
    assert!(done.failed.is_empty(), "{done:?}");
    let mut r = connect(&url_at(replica().port(), "capgate", None, "")).await;
    apply::install(&mut r).await.expect("replica functions");
    (policy, admin)
}

pub(super) fn rows(server: &capgate::testbed::MariaDb) -> String {
    server.sql("SELECT id, bal, IFNULL(note, 'NULL') FROM cgsync.acct ORDER BY id").expect("rows")
}

/// Waits (bounded) until the replica has no branch of ours left: XA COMMIT runs off the
/// client's critical path.
pub(super) async fn settled() {
    settled_at(replica()).await
}

/// [`settled`] for the replica `server`.
pub(super) async fn settled_at(server: &capgate::testbed::MariaDb) {
    let mut r = connect(&url_at(server.port(), "capgate", None, "")).await;
    for _ in 0..200 {
        if xa::prepared(&mut r, "capgate:").await.expect("xa recover").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("branches still prepared on the replica");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_commit_commits_on_both_sites_or_neither() {
    let _turn = SERVER.lock().await;
    let (policy, mut admin) = setup().await;
    let replicas = vec![slot(replica().port())];

    let mut s = session().await;
    s.0.query_drop(
        "INSERT INTO acct VALUES (3, 300, 'c'); UPDATE acct SET bal = bal - 10, note = NULL WHERE id = 1; DELETE FROM acct WHERE id = 2",
    )
    .await
    .expect("writes");
    let g = gid();
    assert_eq!(sync::commit(&mut s, &replicas, &policy, g.clone(), "test", TIMEOUT).await, Outcome::Committed);
    settled().await;
    assert_eq!(rows(primary()), "1\t90\tNULL\n3\t300\tc");
    assert_eq!(rows(replica()), rows(primary()));
    let decided: Option<bool> = admin.exec_first("SELECT committed FROM capgate.decisions WHERE gid = ?", (g,)).await.expect("decision");
    assert_eq!(decided, Some(true));

    // The same session again: the replica connection is reused once its XA COMMIT is done.
    s.0.query_drop("BEGIN").await.expect("begin");
    s.0.query_drop("UPDATE acct SET bal = 0 WHERE id = 3").await.expect("update");
    assert_eq!(sync::commit(&mut s, &replicas, &policy, gid(), "test", TIMEOUT).await, Outcome::Committed);
    settled().await;
    assert_eq!(rows(replica()), "1\t90\tNULL\n3\t0\tc");

    // A transaction with no sync changes commits as it came, with no decision record.
    s.0.query_drop("BEGIN").await.expect("begin");
    s.0.query_drop("SELECT * FROM acct").await.expect("read");
    let g = gid();
    assert_eq!(sync::commit(&mut s, &replicas, &policy, g.clone(), "test", TIMEOUT).await, Outcome::Committed);
    let decided: Option<bool> = admin.exec_first("SELECT committed FROM capgate.decisions WHERE gid = ?", (g,)).await.expect("decision");
    assert_eq!(decided, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_rows_differ_refuses_and_nothing_commits() {
    let _turn = SERVER.lock().await;
    let (policy, mut admin) = setup().await;
    replica().sql("UPDATE cgsync.acct SET bal = 999 WHERE id = 2").expect("diverge");
    let replicas = vec![slot(replica().port())];
    let mut s = session().await;
    s.0.query_drop("UPDATE acct SET bal = bal + 1").await.expect("update");
    let g = gid();
    let Outcome::Refused(refusal) = sync::commit(&mut s, &replicas, &policy, g.clone(), "test", TIMEOUT).await else {
        panic!("expected a refusal")
    };
    assert_eq!(refusal.code, "CGC01");
    assert!(refusal.message.contains("replica \"east\"") && refusal.message.contains("cgsync.acct"), "{}", refusal.message);
    assert!(refusal.message.contains("update_missing_or_differs cgsync.acct {\"id\":2}"), "{}", refusal.message);
    settled().await;
    assert_eq!(rows(primary()), "1\t100\ta\n2\t200\tb", "the primary rolled back");
    assert_eq!(rows(replica()), "1\t100\ta\n2\t999\tb", "the replica rolled back");
    let decided: Option<bool> = admin.exec_first("SELECT committed FROM capgate.decisions WHERE gid = ?", (g,)).await.expect("decision");
    assert_eq!(decided, None, "the decision record went with the primary transaction");
    // The session goes on: the next transaction commits.
    s.0.query_drop("BEGIN").await.expect("begin");
    s.0.query_drop("UPDATE acct SET bal = 1 WHERE id = 1").await.expect("update");
    assert_eq!(sync::commit(&mut s, &replicas, &policy, gid(), "test", TIMEOUT).await, Outcome::Committed);
    settled().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_replica_refuses_and_the_primary_rolls_back() {
    let _turn = SERVER.lock().await;
    let (policy, _admin) = setup().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let replicas = vec![slot(closed)];
    let mut s = session().await;
    s.0.query_drop("INSERT INTO acct VALUES (9, 9, 'x')").await.expect("insert");
    let Outcome::Refused(refusal) = sync::commit(&mut s, &replicas, &policy, gid(), "test", TIMEOUT).await else {
        panic!("expected a refusal")
    };
    assert_eq!(refusal.code, "55000");
    assert!(refusal.message.contains("replica \"east\" could not prepare it") && refusal.message.contains("nothing was committed"));
    assert_eq!(rows(primary()), "1\t100\ta\n2\t200\tb");
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_resolves_branches_left_by_a_coordinator_that_died() {
    let _turn = SERVER.lock().await;
    let (_policy, mut admin) = setup().await;
    let url = replica_url(replica().port());
    let tables = {
        let mut r = connect(&url_at(replica().port(), "capgate", None, "")).await;
        capture::tables(&mut r).await.expect("tables")
    };

    // (1) Died between XA PREPARE and the primary COMMIT: the primary transaction never
    // committed, so there is no decision: recovery rolls the branch back.
    let mut s = session().await;
    s.0.query_drop("UPDATE acct SET bal = 1 WHERE id = 1").await.expect("update");
    let lost = gid();
    let changes = store::read_sync_changes(&mut s.0, &lost, "test").await.expect("read");
    let branch = xa::ReplicaConn::connect(&url, TIMEOUT)
        .await
        .expect("connect")
        .prepare(&lost, &apply::statements(&changes, &tables).expect("sql"))
        .await
        .map_err(|(_, f)| f)
        .expect("prepare");
    drop(branch);
    drop(s); // the client's connection closes: the primary rolls back.

    // (2) Died between the primary COMMIT and XA COMMIT: the decision is committed, so
    // recovery commits the branch — here with the owning connection still alive (the server
    // refuses a commit from another session then), so recovery kills it first, in the round
    // after the one that found it held.
    let mut s = session().await;
    s.0.query_drop("UPDATE acct SET bal = 2 WHERE id = 2").await.expect("update");
    let kept = gid();
    let changes = store::read_sync_changes(&mut s.0, &kept, "test").await.expect("read");
    let branch = xa::ReplicaConn::connect(&url, TIMEOUT)
        .await
        .expect("connect")
        .prepare(&kept, &apply::statements(&changes, &tables).expect("sql"))
        .await
        .map_err(|(_, f)| f)
        .expect("prepare");
    s.0.query_drop("COMMIT").await.expect("primary commit");
    let owner = branch.thread();

    let mut r = connect(&url_at(replica().port(), "capgate", None, "")).await;
    let mut report = capgate::replicate::recovery::RecoveryReport::default();
    let mut held = xa::Held::default();
    for _ in 0..100 {
        let round = xa::recover(&mut admin, &mut r, "capgate:test:", &mut held).await.expect("recover");
        report.committed.extend(round.committed);
        report.rolled_back.extend(round.rolled_back);
        if xa::prepared(&mut r, "capgate:").await.expect("list").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(report.committed, vec![kept]);
    let alive: Option<u64> =
        r.exec_first("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = ?", (owner,)).await.expect("processlist");
    assert_eq!(alive, None, "the owning connection was killed");
    drop(branch);
    assert_eq!(report.rolled_back, vec![lost.clone()]);
    assert_eq!(rows(primary()), "1\t100\ta\n2\t2\tb");
    assert_eq!(rows(replica()), rows(primary()));
    let fence: Option<bool> = admin.exec_first("SELECT committed FROM capgate.decisions WHERE gid = ?", (lost,)).await.expect("fence");
    assert_eq!(fence, Some(false), "recovery recorded the abort before rolling back");
}

/// A session whose COMMIT reached the primary but whose reply was lost (its connection failed).
struct LostReply(Session);

impl PrimaryTx for LostReply {
    async fn read_changes(&mut self, gid: &str, origin: &str) -> Result<Vec<Change>, String> {
        self.0.read_changes(gid, origin).await
    }
    async fn commit(&mut self) -> Option<bool> {
        self.0.commit().await.expect("the primary commits");
        None
    }
    async fn rollback(&mut self) {
        self.0.rollback().await;
    }
}

/// When the primary's answer to COMMIT is lost, nobody knows whether it committed: the
/// branches are left prepared for recovery, which follows the decision record (committed
/// here). Rolling them back, as a failed COMMIT does, left the replica without the rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_outcome_is_unknown_leaves_the_branches_to_recovery() {
    let _turn = SERVER.lock().await;
    let (policy, mut admin) = setup().await;
    let replicas = vec![slot(replica().port())];
    let mut s = LostReply(session().await);
    s.0 .0.query_drop("UPDATE acct SET bal = 7 WHERE id = 1").await.expect("update");
    let g = gid();
    assert_eq!(sync::commit(&mut s, &replicas, &policy, g.clone(), "test", TIMEOUT).await, Outcome::Failed);
    assert_eq!(rows(primary()), "1\t7\ta\n2\t200\tb", "the primary committed");
    let mut r = connect(&url_at(replica().port(), "capgate", None, "")).await;
    let left: Vec<String> = xa::prepared(&mut r, "capgate:test:").await.expect("xa recover").into_iter().map(|b| b.gid).collect();
    assert_eq!(left, vec![g.clone()], "left prepared, not rolled back");
    let mut held = xa::Held::default();
    for _ in 0..2 {
        xa::recover(&mut admin, &mut r, "capgate:test:", &mut held).await.expect("recover");
    }
    settled().await;
    assert_eq!(rows(replica()), rows(primary()), "recovery committed the branch, as the decision record says");
}

/// A recovery round that finds a decided branch held by a live connection leaves it for one
/// round: that is usually a commit whose own XA COMMIT is on its way. The connection is not
/// killed, and commits the branch itself (a branch still held a round later is resolved by
/// killing its connection: the test above).
#[tokio::test(flavor = "multi_thread")]
async fn recovery_leaves_a_decided_branch_to_its_live_connection_for_a_round() {
    let _turn = SERVER.lock().await;
    let (_policy, mut admin) = setup().await;
    let tables = {
        let mut r = connect(&url_at(replica().port(), "capgate", None, "")).await;
        capture::tables(&mut r).await.expect("tables")
    };
    let mut s = session().await;
    s.0.query_drop("UPDATE acct SET bal = 3 WHERE id = 1").await.expect("update");
    let g = gid();
    let changes = store::read_sync_changes(&mut s.0, &g, "test").await.expect("read");
    let branch = xa::ReplicaConn::connect(&replica_url(replica().port()), TIMEOUT)
        .await
        .expect("connect")
        .prepare(&g, &apply::statements(&changes, &tables).expect("sql"))
        .await
        .map_err(|(_, f)| f)
        .expect("prepare");
    s.0.query_drop("COMMIT").await.expect("primary commit");

    let mut r = connect(&url_at(replica().port(), "capgate", None, "")).await;
    let mut held = xa::Held::default();
    let round = xa::recover(&mut admin, &mut r, "capgate:test:", &mut held).await.expect("recover");
    assert_eq!((round.left, round.committed), (vec![g.clone()], vec![]), "the branch was left to its connection");
    branch.commit().await.map_err(|(_, e)| e).expect("the owning connection commits its branch");
    let round = xa::recover(&mut admin, &mut r, "capgate:test:", &mut held).await.expect("recover");
    assert_eq!(round, capgate::replicate::recovery::RecoveryReport::default());
    assert_eq!(rows(replica()), "1\t3\ta\n2\t200\tb");
    assert_eq!(rows(replica()), rows(primary()));
}

/// A session's commits follow one another while the replica's XA COMMIT of the previous one
/// is still on its way (the replica is behind a link with 20 ms each way): the next commit
/// prepares on another connection of the session's slot, waiting on the replica only for the
/// row the previous branch still locks. Every commit reaches the replica, and the slot opens
/// no more than two connections.
#[tokio::test(flavor = "multi_thread")]
async fn a_sessions_commits_follow_each_other_while_the_previous_xa_commit_travels() {
    let _turn = SERVER.lock().await;
    let (policy, _admin) = setup().await;
    let link = Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, replica().port()))).expect("link");
    link.set_latency(Duration::from_millis(20));
    let replicas = vec![slot(link.addr().port())];
    let mut s = session().await;
    for n in 1..=10 {
        if n > 1 {
            s.0.query_drop("BEGIN").await.expect("begin");
        }
        s.0.query_drop(format!("UPDATE acct SET bal = {n} WHERE id = 1")).await.expect("update");
        s.0.query_drop(format!("INSERT INTO acct VALUES ({}, {n}, 'n')", 100 + n)).await.expect("insert");
        assert_eq!(sync::commit(&mut s, &replicas, &policy, gid(), "test", TIMEOUT).await, Outcome::Committed);
    }
    settled().await;
    assert_eq!(rows(replica()), rows(primary()));
    assert!(rows(primary()).starts_with("1\t10\ta\n2\t200\tb\n101\t1\tn\n"), "{}", rows(primary()));
    let opened = link.stats().connections;
    assert!((1..=2).contains(&opened), "the session's slot opened {opened} replica connections");
}

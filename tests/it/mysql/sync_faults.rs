//! A MySQL replica cut off while sync commits run (decision 0016): a silent blackhole makes the
//! COMMIT fail within the prepare deadline with 1180 / 55000 and nothing commits; a reset of
//! the link (the connection capgate kept is dead) and refused connections are answered the
//! same way or, once the link is back, with a new connection (a TRUNCATE of the sync table
//! too, nothing deleted); after restore, once the health loop sees the replica healthy again,
//! commits go on.

use std::net::{Ipv4Addr, SocketAddr};

use std::time::Duration;

use capgate::sites::State;
use capgate::testbed::link::Link;
use mysql_async::prelude::*;

use super::capture::SERVER;
use super::support::{connect, primary, replica, MyProxy, APP_PASSWORD};
use super::sync::{rows, settled, setup};

fn refused(err: &mysql_async::Error) -> bool {
    matches!(err, mysql_async::Error::Server(e) if e.code == 1180 && e.state == "55000" && e.message.contains("replica \"east\""))
}

/// Waits (bounded) until capgate's health loop sees replica `east` healthy.
async fn healthy(p: &MyProxy) {
    let east = p.shared.sites.get("east").expect("replica east is watched");
    east.health().wait_state(State::Healthy, Duration::from_secs(30)).await.expect("east healthy again");
}

/// capgate (site west) in front of the primary with `cgsync.acct` sync and replica east
/// reached through a link of its own, detecting a partition within a few hundred ms.
pub(super) fn sync_proxy_behind_link(name: &str) -> (Link, MyProxy) {
    let link = Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, replica().port()))).expect("link");
    let dir = crate::support::scratch(name);
    std::fs::write(dir.join("policy.toml"), "default = \"local\"\n[[table]]\nmatch = \"cgsync.acct\"\nmode = \"sync\"\n").expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable&connect_timeout=1\"\n\
         partition_latency = \"100ms\"\nheartbeat_timeout = \"400ms\"\n",
        primary().port(),
        link.addr().port()
    );
    (link, MyProxy::start_config(&text, &dir))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_replica_refuses_the_commit_and_nothing_commits() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    let (link, p) = sync_proxy_behind_link("mysql-sync-faults");
    // The prepare deadline is five times the larger of the two (2 s): a new replica
    // connection and its XA round trips must fit in it on a loaded machine.
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;
    c.query_drop("UPDATE acct SET bal = 1 WHERE id = 1").await.expect("through the link");
    settled().await;

    // Blackhole: no answer within the deadline.
    link.blackhole();
    let err = c.query_drop("UPDATE acct SET bal = 2 WHERE id = 1").await.expect_err("refused");
    assert!(refused(&err) && err.to_string().contains("could not prepare it"), "{err}");
    link.restore();
    assert_eq!(rows(primary()), "1\t1\ta\n2\t200\tb");
    // The health loop may have seen the cut: commits go to the replica once it is healthy.
    healthy(&p).await;

    // Reset: the connection capgate kept is dead; a new one is made and the commit goes on.
    c.query_drop("UPDATE acct SET bal = 3 WHERE id = 1").await.expect("after restore");
    link.reset();
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("UPDATE acct SET bal = 4 WHERE id = 1").await.expect("update");
    c.query_drop("COMMIT").await.expect("commit on a new replica connection");

    // Refused connections and a reset together: refused.
    link.refuse(true);
    link.reset();
    let err = c.query_drop("UPDATE acct SET bal = 5 WHERE id = 1").await.expect_err("refused");
    assert!(refused(&err), "{err}");
    // A TRUNCATE of the sync table (carried in a coordinated commit, decision 0029) is
    // refused the same way, and nothing is deleted.
    let err = c.query_drop("TRUNCATE acct").await.expect_err("refused");
    assert!(refused(&err), "{err}");
    assert_eq!(rows(primary()), "1\t4\ta\n2\t200\tb", "the refused TRUNCATE deleted rows");
    link.restore();
    healthy(&p).await;
    c.query_drop("UPDATE acct SET bal = 6 WHERE id = 2").await.expect("after restore");
    settled().await;
    assert_eq!(rows(primary()), "1\t4\ta\n2\t6\tb");
    assert_eq!(rows(replica()), rows(primary()));
}

//! SIGKILL of a capgate process in the middle of MySQL sync commits (decision 0016): killed
//! after the primary's COMMIT while `XA COMMIT` is still on its way, the restarted process's
//! recovery commits the branch (killing the dead process's connection the replica still
//! believes alive); killed while a COMMIT is in flight, recovery leaves both sites equal
//! whichever side of the primary COMMIT the kill fell.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use capgate::store::mysql::xa;
use capgate::testbed::link::Link;
use mysql_async::prelude::*;

use super::capture::SERVER;
use super::support::{connect, primary, replica, url_at, APP_PASSWORD};
use super::sync::{rows, setup};
use crate::support::Process;

/// Waits (bounded) until site `k` has no prepared branch on the replica.
async fn resolved() {
    let mut r = connect(&url_at(replica().port(), "capgate", None, "")).await;
    for _ in 0..1200 {
        if xa::prepared(&mut r, "capgate:k:").await.expect("xa recover").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("site k's branches were never resolved");
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_after_sigkill_leaves_both_sites_equal() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    let link = Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, replica().port()))).expect("link");
    let dir = crate::support::scratch("mysql-sync-kill");
    std::fs::write(dir.join("policy.toml"), "default = \"local\"\n[[table]]\nmatch = \"cgsync.acct\"\nmode = \"sync\"\n").expect("policy");
    let port = capgate::testbed::free_port();
    // Generous partition settings: the 2 s each way used below must not time the PREPARE out
    // (the deadline is 5 × the larger).
    let config = dir.join("capgate.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"k\"\nlisten = \"127.0.0.1:{port}\"\npolicy = \"{}\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
             [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable&connect_timeout=2\"\n\
             partition_latency = \"6s\"\nheartbeat_timeout = \"6s\"\n",
            dir.join("policy.toml").display(),
            primary().port(),
            link.addr().port()
        ),
    )
    .expect("config");
    let log = dir.join("capgate.log");
    let app_url = url_at(port, "app", Some(APP_PASSWORD), "cgsync");

    // (1) Killed after the primary COMMIT, with XA COMMIT in the link's delay line.
    let mut first = Process::start(&config, port, &log);
    let mut app = connect(&app_url).await;
    app.query_drop("UPDATE acct SET bal = 1 WHERE id = 1").await.expect("warm");
    app.query_drop("BEGIN").await.expect("begin");
    app.query_drop("UPDATE acct SET bal = 2 WHERE id = 1").await.expect("update");
    link.set_latency(Duration::from_secs(2));
    app.query_drop("COMMIT").await.expect("commit");
    link.blackhole();
    first.kill();
    drop(app);
    assert_eq!(rows(primary()), "1\t2\ta\n2\t200\tb");
    link.restore();
    link.set_latency(Duration::ZERO);
    let mut second = Process::start(&config, port, &log);
    resolved().await;
    assert_eq!(rows(replica()), rows(primary()), "recovery committed the decided branch");

    // (2) Killed while a COMMIT is in flight: the session's replica connection is made first
    // (over the fast link), then the PREPARE takes 4 s over the slow one; the kill at 3 s
    // falls after the replica prepared and before the primary COMMIT.
    let mut app = connect(&app_url).await;
    app.query_drop("UPDATE acct SET bal = 5 WHERE id = 2").await.expect("warm");
    app.query_drop("BEGIN").await.expect("begin");
    app.query_drop("UPDATE acct SET bal = 3 WHERE id = 2").await.expect("update");
    link.set_latency(Duration::from_secs(2));
    let commit = tokio::spawn(async move { app.query_drop("COMMIT").await.is_ok() });
    tokio::time::sleep(Duration::from_millis(3000)).await;
    second.kill();
    let _ = commit.await;
    link.set_latency(Duration::ZERO);
    let _third = Process::start(&config, port, &log);
    resolved().await;
    assert_eq!(rows(replica()), rows(primary()), "both sites equal whichever side of the COMMIT the kill fell");
    assert_eq!(rows(primary()), "1\t2\ta\n2\t5\tb", "the primary never committed the killed transaction");
}

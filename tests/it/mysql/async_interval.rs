//! `ship_interval` on a MySQL replica (decision 0037): while changes keep coming, the shipper
//! reads a batch at most once per interval, so writes spread over a few seconds arrive in a
//! few batches (back to back, nearly every write is a batch of its own), and every one of
//! them arrives.

use std::time::{Duration, Instant};

use mysql_async::prelude::*;

use super::async_ship::{converged, link, servers, setup_both, TURN};
use super::support::{connect, MyProxy};

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"tickdb.tick\"\nmode = \"async\"\n";

/// The replica's shipper in `/status` of `admin`.
async fn shipper(admin: std::net::SocketAddr) -> serde_json::Value {
    let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/status", None)).await.expect("join");
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
    doc["replicas"][0]["shipper"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_arriving_steadily_ship_in_one_batch_per_ship_interval() {
    let _turn = TURN.lock().await;
    setup_both("DROP DATABASE IF EXISTS tickdb; CREATE DATABASE tickdb; CREATE TABLE tickdb.tick (id INT PRIMARY KEY)");
    let link = link();
    let dir = crate::support::scratch("mysql-async-interval");
    std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\nadmin = \"127.0.0.1:0\"\n\
         [primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@{}/?sslmode=disable\"\nship_interval = \"1s\"\n",
        servers().0.port(),
        link.addr()
    );
    let p = MyProxy::start_config(&text, &dir);
    let admin = p.admin.expect("admin listener");
    let mut c = connect(&p.url("capgate", None, "tickdb")).await;

    // A first write, shipped, so the table is copied and the shipper is under way.
    c.query_drop("INSERT INTO tick VALUES (1000)").await.expect("first write");
    converged("SELECT COUNT(*) FROM tickdb.tick").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while shipper(admin).await["batches"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the first write's batch was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batches = || async { shipper(admin).await["batches"].as_u64().expect("batches in /status") };
    let before = batches().await;

    let began = Instant::now();
    for id in 0..40 {
        c.exec_drop("INSERT INTO tick VALUES (?)", (id,)).await.expect("insert");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(converged("SELECT COUNT(*) FROM tickdb.tick").await, "41");
    let (shipped_in, elapsed) = (batches().await - before, began.elapsed().as_secs_f64());
    // Batches are read at least 1 s apart: over `elapsed` seconds, at most one per second and
    // one more (the first is read at once).
    assert!(shipped_in >= 1 && shipped_in as f64 <= elapsed.floor() + 1.0, "{shipped_in} batches in {elapsed:.1} s");
    assert_eq!(converged("SELECT COUNT(*), SUM(id) FROM tickdb.tick").await, "41\t1780");
}

//! A MySQL replica under the site health monitor, seen through the capgate process: `/status`
//! and `/metrics` show its state, round trip and lag as for a PostgreSQL replica; once the
//! link is cut and the replica is seen partitioned, a sync table with `on_partition = "fail"`
//! is refused at once (1180 / 55000 naming the table, the policy and the remedy), and one with
//! `"block"` waits, then commits on both sites when the link heals (and `/history`, the
//! dashboard's chart, has the replica healthy then partitioned); `capgate verify` then
//! waits for an async write in flight and finds the sites equal.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use capgate::testbed::link::Link;
use mysql_async::prelude::*;

use super::capture::SERVER;
use super::support::{connect, primary, replica, MyProxy, APP_PASSWORD};
use super::sync::{settled, setup};

const POLICY: &str = "default = \"local\"\n\
    [[table]]\nmatch = \"cgsync.acct\"\nmode = \"sync\"\non_partition = \"fail\"\n\
    [[table]]\nmatch = \"cgsync.held\"\nmode = \"sync\"\non_partition = \"block\"\npartition_timeout = \"60s\"\n\
    [[table]]\nmatch = \"cgsync.log\"\nmode = \"async\"\n";

/// `/status` over HTTP, as JSON.
pub(super) async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/status", None)).await.expect("join");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

async fn metrics(admin: SocketAddr) -> String {
    let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/metrics", None)).await.expect("join");
    assert_eq!(code, 200, "{body}");
    body
}

/// Polls `/status` (bounded) until `check` holds for it; returns that document.
pub(super) async fn until(admin: SocketAddr, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let doc = status(admin).await;
        if check(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "/status never showed {what}:\n{doc:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the first metrics line that starts with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_replica_and_sync_tables_refuse_or_wait_while_it_is_partitioned() {
    let _turn = SERVER.lock().await;
    let _ = setup().await;
    let ddl = "CREATE TABLE cgsync.held (id INT PRIMARY KEY, v VARCHAR(20)); CREATE TABLE cgsync.log (id INT PRIMARY KEY, v VARCHAR(20))";
    primary().sql(ddl).expect("primary");
    replica().sql(ddl).expect("replica");
    let link = Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, replica().port()))).expect("link");
    let dir = crate::support::scratch("mysql-health");
    std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");
    // A sync commit's prepare may take 5 × heartbeat_timeout (5 s): after the heal the first one
    // reconnects, which on a loaded machine took longer than 1.5 s (300 ms timeouts) once.
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n\
         [primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@{}/?sslmode=disable&connect_timeout=1\"\n\
         partition_latency = \"200ms\"\nheartbeat_timeout = \"1s\"\n",
        primary().port(),
        link.addr()
    );
    let p = MyProxy::start_config(&text, &dir);
    let admin = p.admin.expect("admin listener");
    let mut c = connect(&p.url("app", Some(APP_PASSWORD), "cgsync")).await;

    // Healthy, with a round trip; the primary is up; an async write shows a measured lag.
    c.query_drop("INSERT INTO log VALUES (1, 'shipped')").await.expect("async write");
    let doc = until(admin, "east healthy with its lag, the primary up", |d| {
        let r = &d["replicas"][0];
        r["state"] == "healthy"
            && r["rtt_ms"].is_f64()
            && r["pending_rows"].as_u64() == Some(0)
            && r["lag_seconds"].is_f64()
            && d["primary"]["state"] == "up"
    })
    .await;
    assert!(doc["primary"]["rtt_ms"].is_f64(), "{doc:#}");
    assert_eq!(doc["replicas"][0]["name"], "east");
    assert_eq!(doc["replicas"][0]["shipping"], "running", "{doc:#}");
    let log = doc["replicas"][0]["tables"].as_array().expect("tables").iter().find(|t| t["table"] == "cgsync.log").cloned();
    assert_eq!(log.as_ref().map(|t| t["mode"].clone()), Some("async".into()), "{doc:#}");
    assert_eq!(replica().sql("SELECT v FROM cgsync.log").expect("replica"), "shipped");
    let m = metrics(admin).await;
    assert_eq!(metric(&m, "capgate_replica_up{replica=\"east\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "capgate_replica_state{replica=\"east\",state=\"healthy\"}"), Some(1.0), "{m}");
    assert!(metric(&m, "capgate_replica_rtt_seconds{replica=\"east\"}").is_some_and(|s| s > 0.0), "{m}");
    assert_eq!(metric(&m, "capgate_replica_pending_rows{replica=\"east\",table=\"cgsync.log\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "capgate_primary_up"), Some(1.0), "{m}");
    c.query_drop("INSERT INTO held VALUES (1, 'before')").await.expect("sync write while healthy");
    settled().await;

    // Cut: the health loop sees the partition; /status and /metrics say so.
    link.blackhole();
    // The shipper drops the replica's connection and waits for the heal.
    let doc = until(admin, "east partitioned, its shipper too", |d| {
        d["replicas"][0]["state"] == "partitioned" && d["replicas"][0]["shipping"] == "partitioned"
    })
    .await;
    assert!(doc["replicas"][0]["last_error"].is_string(), "{doc:#}");
    let m = metrics(admin).await;
    assert_eq!(metric(&m, "capgate_replica_up{replica=\"east\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "capgate_replica_state{replica=\"east\",state=\"partitioned\"}"), Some(1.0), "{m}");
    // The dashboard's chart: /history has east's samples, healthy with its lag, then partitioned.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = tokio::task::spawn_blocking(move || crate::admin::get(admin, "/history", None)).await.expect("join");
        assert_eq!(code, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("/history JSON");
        let samples = doc["replicas"]["east"].as_array().cloned().unwrap_or_default();
        let healthy = samples.iter().any(|s| s["state"] == "healthy" && s["lag_seconds"].is_f64() && s["rtt_ms"].is_f64());
        if healthy && samples.iter().any(|s| s["state"] == "partitioned") {
            break;
        }
        assert!(Instant::now() < deadline, "/history never showed east healthy then partitioned: {doc:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // fail: refused at once, naming the table, the policy and the remedy; nothing commits.
    let err = c.query_drop("UPDATE acct SET bal = 7 WHERE id = 1").await.expect_err("refused while partitioned");
    let mysql_async::Error::Server(e) = &err else { panic!("expected a server error, got {err}") };
    assert_eq!((e.code, e.state.as_str()), (1180, "55000"), "{err}");
    for part in ["replica \"east\" is partitioned", "cgsync.acct", "on_partition = \"fail\"", "make them async or bounded"] {
        assert!(e.message.contains(part), "no `{part}` in: {}", e.message);
    }
    assert_eq!(primary().sql("SELECT bal FROM cgsync.acct WHERE id = 1").expect("primary"), "100");

    // block: the commit waits for the link, and goes through on both sites once it heals.
    let url = p.url("app", Some(APP_PASSWORD), "cgsync");
    let blocked = tokio::spawn(async move {
        let mut c = connect(&url).await;
        c.query_drop("BEGIN").await.expect("begin");
        c.query_drop("INSERT INTO held VALUES (2, 'healed')").await.expect("insert");
        c.query_drop("COMMIT").await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!blocked.is_finished(), "the commit did not wait for the partition to heal");
    link.restore();
    let committed = tokio::time::timeout(Duration::from_secs(60), blocked).await.expect("the blocked commit never ended").expect("join");
    committed.unwrap_or_else(|e| panic!("the blocked commit failed after the link healed: {e}"));
    settled().await;
    let held = "SELECT id, v FROM cgsync.held ORDER BY id";
    assert_eq!(primary().sql(held).expect("primary"), "1\tbefore\n2\thealed");
    assert_eq!(replica().sql(held).expect("replica"), "1\tbefore\n2\thealed");
    until(admin, "east healthy again, shipping", |d| d["replicas"][0]["state"] == "healthy" && d["replicas"][0]["shipping"] == "running")
        .await;
    c.query_drop("UPDATE acct SET bal = 8 WHERE id = 1").await.expect("a fail table commits once healed");
    settled().await;
    assert_eq!(replica().sql("SELECT bal FROM cgsync.acct WHERE id = 1").expect("replica"), "8");

    // verify compares what is shipped: it waits for the async write just made to reach the
    // replica, then finds every table equal.
    c.query_drop("INSERT INTO log VALUES (2, 'in flight')").await.expect("async write");
    let tables =
        ["cgsync.acct", "cgsync.held", "cgsync.log"].iter().map(|t| capgate::verify::mysql::sql::parse_table_name(t).expect("name"));
    let selection = capgate::verify::Selection::Named(tables.collect());
    let report = capgate::verify::run(&p.shared.config, &selection, capgate::verify::Limits::default()).await.expect("verify runs");
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    assert!(
        report.replicas[0].consistent_point.contains("applied every change committed on the primary up to change"),
        "{}",
        report.render()
    );
}

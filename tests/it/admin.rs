//! The admin endpoints: `/status` and `/metrics` show the site, the policy version, the
//! client connections, each replica's health and its shipper's figures, and a
//! configured token is enforced.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{connect, primary, replica, scratch, Proxy};

/// A plain HTTP/1.1 GET; (status code, body).
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// A proxy for site `site` (each test its own: shippers of one site and replica share a
/// lock across processes) replicating to `virginia` (the test replica) and `oregon` (a port
/// nothing listens on), with `top` added to the top-level keys.
fn start(site: &str, top: &str) -> Proxy {
    start_in(site, top, &scratch("admin"), "postgres")
}

/// The same in directory `dir`, on database `db` of both servers (a database holds one
/// site's change stream: tests that write replicated tables use their own).
fn start_in(site: &str, token: &str, dir: &std::path::Path, db: &str) -> Proxy {
    let dead = capgate::testbed::free_port();
    let text = format!(
        "site = \"{site}\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{token}\n[primary]\nurl = \"{}\"\n\
         [[replicas]]\nname = \"virginia\"\nurl = \"{}?sslmode=disable\"\nheartbeat_interval = \"50ms\"\n\
         [[replicas]]\nname = \"oregon\"\nurl = \"postgres://postgres@127.0.0.1:{dead}/postgres?sslmode=disable&connect_timeout=1\"\nheartbeat_interval = \"50ms\"\n",
        primary().url("postgres", db),
        replica().url("postgres", db),
    );
    Proxy::start_config(&text, dir)
}

async fn status_of(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = tokio::task::spawn_blocking(move || get(admin, "/status", None)).await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn status_and_metrics_show_the_site_and_its_replicas() {
    let proxy = start("seattle_admin", "");
    let admin = proxy.admin.expect("admin listener");
    let _a = connect(&proxy.url("postgres", "postgres")).await;
    let _b = connect(&proxy.url("postgres", "postgres")).await;

    // Wait for the health loops to settle: virginia answers, oregon does not exist.
    let deadline = Instant::now() + Duration::from_secs(30);
    // The shippers start with the server: virginia's ships, oregon's keeps trying.
    let status = loop {
        let v = status_of(admin).await;
        let states: Vec<_> = v["replicas"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap().to_owned()).collect();
        let measured = v["replicas"][0]["lag_seconds"].is_number();
        if states == ["healthy", "partitioned"] && v["replicas"][0]["shipping"] == "running" && v["primary"]["state"] == "up" && measured {
            break v;
        }
        assert!(Instant::now() < deadline, "replica states or shipping never settled: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["site"], "seattle_admin");
    assert_eq!(status["primary"]["address"], format!("127.0.0.1:{}", primary().port()), "{status}");
    assert!(status["primary"]["rtt_ms"].as_f64().unwrap() > 0.0, "{status}");
    assert_eq!(status["replicas"][0]["problems"], serde_json::json!([]), "{status}");
    assert_eq!(status["policy_version"], 0, "no policy file: the built-in policy");
    assert_eq!(status["client_connections"], 2);
    assert_eq!(status["replicas"][0]["name"], "virginia");
    assert!(status["replicas"][0]["rtt_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(status["replicas"][0]["lag_seconds"], 0.0, "{status}");
    assert_eq!(status["replicas"][0]["pending_rows"], 0, "{status}");
    assert_eq!(status["replicas"][0]["conflicts"], 0, "{status}");
    assert_eq!(status["replicas"][1]["shipping"], "partitioned", "{status}");
    assert!(status["replicas"][1]["last_error"].as_str().unwrap_or_default().contains("connect"), "{status}");

    let (code, metrics) = tokio::task::spawn_blocking(move || get(admin, "/metrics", None)).await.unwrap();
    assert_eq!(code, 200);
    for line in [
        "capgate_client_connections 2",
        "capgate_replica_up{replica=\"virginia\"} 1",
        "capgate_replica_up{replica=\"oregon\"} 0",
        "capgate_replica_state{replica=\"oregon\",state=\"partitioned\"} 1",
        "capgate_shipper_running{replica=\"virginia\"} 1",
        "capgate_shipper_running{replica=\"oregon\"} 0",
        "capgate_shipper_pending_changes{replica=\"virginia\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in:\n{metrics}");
    }
    assert!(metrics.contains("capgate_replica_rtt_seconds{replica=\"virginia\"}"), "{metrics}");
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let proxy = start("seattle_token", "admin_token = \"s3cret-token\"");
    let admin = proxy.admin.expect("admin listener");
    let (no, wrong, right) = tokio::task::spawn_blocking(move || {
        (get(admin, "/status", None).0, get(admin, "/metrics", Some("guess")).0, get(admin, "/status", Some("s3cret-token")).0)
    })
    .await
    .unwrap();
    assert_eq!((no, wrong, right), (401, 401, 200));
}

/// A write through the proxy to an async table reaches the replica through the shipper
/// `capgate run` started, and `/status` names the policy's tables with their figures.
#[tokio::test]
async fn the_shipper_runs_inside_the_server_and_status_shows_its_tables() {
    let site = "seattle_ship";
    let table = "public.admin_shipped";
    let dir = scratch("admin_ship");
    std::fs::write(
        dir.join("policy.toml"),
        format!("default = \"local\"\n[[table]]\nmatch = \"{table}\"\nmode = \"async\"\non_conflict = \"skip\"\n[[table]]\nmatch = \"public.admin_glob_*\"\nmode = \"async\"\n"),
    )
    .unwrap();
    for server in [primary(), replica()] {
        let _ = server.psql("DROP DATABASE IF EXISTS admin_ship");
        server.psql("CREATE DATABASE admin_ship").expect("database");
    }
    let primary = connect(&primary().url("postgres", "admin_ship")).await;
    let replica = connect(&replica().url("postgres", "admin_ship")).await;
    for c in [&primary, &replica] {
        c.batch_execute(&format!("CREATE TABLE {table} (k int PRIMARY KEY)")).await.unwrap();
    }
    let proxy = start_in(site, "policy = \"policy.toml\"", &dir, "admin_ship");
    let admin = proxy.admin.expect("admin listener");
    let app = connect(&proxy.url("postgres", "admin_ship")).await;
    app.batch_execute(&format!("INSERT INTO {table} (k) VALUES (7)")).await.expect("write through capgate");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = replica.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the write never reached the replica: {}", status_of(admin).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let v = status_of(admin).await;
        if v["replicas"][0]["applied_snapshot"].is_string() && v["replicas"][0]["pending_rows"] == 0 {
            break v;
        }
        assert!(Instant::now() < deadline, "the status never caught up: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tables = status["replicas"][0]["tables"].as_array().unwrap();
    let shipped = tables.iter().find(|t| t["table"] == table).unwrap_or_else(|| panic!("{table} not listed: {status}"));
    assert_eq!(shipped["mode"], "async");
    assert_eq!(shipped["pending_rows"], 0);
    assert_eq!(shipped["lag_seconds"], 0.0);
    assert_eq!(shipped["state"], "copied", "{status}");
    assert!(tables.iter().all(|t| t["table"] != "public.admin_glob_*"), "globs are not tables: {status}");
    let (_, metrics) = tokio::task::spawn_blocking(move || get(admin, "/metrics", None)).await.unwrap();
    let line = format!("capgate_replica_pending_rows{{replica=\"virginia\",table=\"{table}\"}} 0");
    assert!(metrics.lines().any(|l| l == line), "missing `{line}` in:\n{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("capgate_shipped_changes_total{replica=\"virginia\"} ")), "{metrics}");
}

/// The value of the Prometheus line starting with `prefix` (followed by a space), if any.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` counts live tokio tasks on the main runtime and on the session workers, so a
/// soak can tell tasks that outlive their sessions: each session is a task while it lasts,
/// and with no replica (no pooled connection driven from a session worker) the session
/// workers run nothing once the sessions have closed.
#[tokio::test]
async fn metrics_count_tasks_and_session_tasks_end_with_their_sessions() {
    let proxy = Proxy::start("admin = \"127.0.0.1:0\"");
    let admin = proxy.admin.expect("admin listener");
    let read = |admin| async move {
        let (code, text) = tokio::task::spawn_blocking(move || get(admin, "/metrics", None)).await.unwrap();
        assert_eq!(code, 200, "{text}");
        let sessions = metric(&text, "capgate_tasks{runtime=\"sessions\"}").unwrap_or_else(|| panic!("no session task count in:\n{text}"));
        let main = metric(&text, "capgate_tasks{runtime=\"main\"}").unwrap_or_else(|| panic!("no main task count in:\n{text}"));
        (sessions, main)
    };
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = connect(&proxy.url("postgres", "postgres")).await;
        c.simple_query("SELECT 1").await.expect("query through capgate");
        clients.push(c);
    }
    let (sessions, main) = read(admin).await;
    assert!(sessions >= 3.0, "3 sessions open, {sessions} tasks on the session workers");
    assert!(main >= 1.0, "the accept loop and the admin listener run on the main runtime: {main} tasks");
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sessions, _) = read(admin).await;
        if sessions == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{sessions} tasks left on the session workers after every session closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

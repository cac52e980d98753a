//! The admin endpoints: `/status` and `/metrics` show the site, the policy version, the
//! client connections and each replica's health, and a configured token is enforced.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{connect, primary, replica, scratch, Proxy};

/// A plain HTTP/1.1 GET; (status code, body).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
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

fn start(token: &str) -> Proxy {
    let dead = capgate::testbed::free_port();
    let text = format!(
        "site = \"seattle\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{token}\n[primary]\nurl = \"{}\"\n\
         [[replicas]]\nname = \"virginia\"\nurl = \"{}?sslmode=disable\"\nheartbeat_interval = \"50ms\"\n\
         [[replicas]]\nname = \"oregon\"\nurl = \"postgres://postgres@127.0.0.1:{dead}/postgres?sslmode=disable&connect_timeout=1\"\nheartbeat_interval = \"50ms\"\n",
        primary().url("postgres", "postgres"),
        replica().url("postgres", "postgres"),
    );
    Proxy::start_config(&text, &scratch("admin"))
}

#[tokio::test]
async fn status_and_metrics_show_the_site_and_its_replicas() {
    let proxy = start("");
    let admin = proxy.admin.expect("admin listener");
    let _a = connect(&proxy.url("postgres", "postgres")).await;
    let _b = connect(&proxy.url("postgres", "postgres")).await;

    // Wait for the health loops to settle: virginia answers, oregon does not exist.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (code, body) = tokio::task::spawn_blocking(move || get(admin, "/status", None)).await.unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let states: Vec<_> = v["replicas"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap().to_owned()).collect();
        if states == ["healthy", "partitioned"] {
            break v;
        }
        assert!(Instant::now() < deadline, "replica states never settled: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["site"], "seattle");
    assert_eq!(status["policy_version"], 0, "no policy file: the built-in policy");
    assert_eq!(status["client_connections"], 2);
    assert_eq!(status["replicas"][0]["name"], "virginia");
    assert!(status["replicas"][0]["rtt_ms"].as_f64().unwrap() > 0.0);
    assert!(status["replicas"][0]["lag_seconds"].is_null(), "no async replication yet: no made-up lag");
    assert!(status["replicas"][1]["last_error"].as_str().unwrap_or_default().contains("connect"), "{status}");

    let (code, metrics) = tokio::task::spawn_blocking(move || get(admin, "/metrics", None)).await.unwrap();
    assert_eq!(code, 200);
    for line in [
        "capgate_client_connections 2",
        "capgate_replica_up{replica=\"virginia\"} 1",
        "capgate_replica_up{replica=\"oregon\"} 0",
        "capgate_replica_state{replica=\"oregon\",state=\"partitioned\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in:\n{metrics}");
    }
    assert!(metrics.contains("capgate_replica_rtt_seconds{replica=\"virginia\"}"), "{metrics}");
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let proxy = start("admin_token = \"s3cret-token\"");
    let admin = proxy.admin.expect("admin listener");
    let (no, wrong, right) = tokio::task::spawn_blocking(move || {
        (get(admin, "/status", None).0, get(admin, "/metrics", Some("guess")).0, get(admin, "/status", Some("s3cret-token")).0)
    })
    .await
    .unwrap();
    assert_eq!((no, wrong, right), (401, 401, 200));
}

//! `capgate status`: a running capgate's `/status`, as a table for a terminal (`--watch`
//! redraws it), or as the JSON itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// Where to ask and with what token.
struct Target {
    addr: SocketAddr,
    token: Option<String>,
}

fn target(config: Option<&Path>, url: Option<&str>) -> Result<Target, String> {
    if let Some(url) = url {
        let hostport = url.trim_start_matches("http://").trim_end_matches('/');
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("--url {url}: {e}"))?
            .next()
            .ok_or_else(|| format!("--url {url}: no address"))?;
        return Ok(Target { addr, token: std::env::var("CAPGATE_ADMIN_TOKEN").ok() });
    }
    let file = config.ok_or("give --config or --url")?;
    let config = Config::load(file).map_err(|e| e.to_string())?;
    let mut addr = config.admin.ok_or_else(|| format!("{} has no admin listener (admin = \"127.0.0.1:9930\")", file.display()))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(Target { addr, token: config.admin_token.or_else(|| std::env::var("CAPGATE_ADMIN_TOKEN").ok()) })
}

/// A plain HTTP/1.0 GET (the admin listener is capgate's own; no client library needed).
pub(super) fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach capgate's admin listener at {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").map_err(|e| format!("{addr}: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("{addr}: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    match head.split_whitespace().nth(1) {
        Some("200") => Ok(body.to_owned()),
        Some("401") => Err(format!("{addr}: the admin token is missing or wrong (admin_token, or CAPGATE_ADMIN_TOKEN)")),
        other => Err(format!("{addr}: HTTP {}: {}", other.unwrap_or("?"), body.trim())),
    }
}

fn num(v: &Value, digits: usize, unit: &str) -> String {
    v.as_f64().map_or_else(|| "-".to_owned(), |f| format!("{f:.digits$}{unit}"))
}

fn int(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// The status as a terminal table.
pub(super) fn render(s: &Value) -> String {
    let p = &s["primary"];
    let mut out = format!(
        "site {} · primary {} {} ({}) · policy v{} · {} session(s) · unknown statements {} relayed, {} refused\n",
        s["site"].as_str().unwrap_or("?"),
        p["address"].as_str().unwrap_or("?"),
        p["state"].as_str().unwrap_or("?"),
        num(&p["rtt_ms"], 1, " ms"),
        s["policy_version"],
        s["client_connections"],
        s["unknown_statements"]["relayed"],
        s["unknown_statements"]["refused"],
    );
    let replicas = s["replicas"].as_array().cloned().unwrap_or_default();
    if replicas.is_empty() {
        out.push_str("no replicas: nothing is replicated\n");
        return out;
    }
    let mut rows =
        vec![["replica", "state", "for", "rtt", "lag", "pending", "drain/s", "conflicts", "shipping"].map(str::to_owned).to_vec()];
    for r in &replicas {
        rows.push(vec![
            r["name"].as_str().unwrap_or("?").to_owned(),
            r["state"].as_str().unwrap_or("?").to_owned(),
            num(&r["state_for_seconds"], 1, "s"),
            num(&r["rtt_ms"], 1, "ms"),
            num(&r["lag_seconds"], 1, "s"),
            int(&r["pending_rows"]),
            num(&r["drain_rate"], 1, ""),
            int(&r["conflicts"]),
            r["shipping"].as_str().unwrap_or("?").to_owned(),
        ]);
    }
    out.push_str(&columns(&rows));
    for r in &replicas {
        let name = r["name"].as_str().unwrap_or("?");
        for p in r["problems"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {name}: misconfigured: {}\n", p.as_str().unwrap_or("?")));
        }
        if r["state"] != "healthy" {
            if let Some(e) = r["last_error"].as_str() {
                out.push_str(&format!("  {name}: last error: {e}\n"));
            }
        }
    }
    let mut tables = vec![["replica", "table", "mode", "lag", "pending"].map(str::to_owned).to_vec()];
    for r in &replicas {
        for t in r["tables"].as_array().into_iter().flatten() {
            tables.push(vec![
                r["name"].as_str().unwrap_or("?").to_owned(),
                t["table"].as_str().unwrap_or("?").to_owned(),
                t["mode"].as_str().unwrap_or("?").to_owned(),
                num(&t["lag_seconds"], 1, "s"),
                int(&t["pending_rows"]),
            ]);
        }
    }
    if tables.len() > 1 {
        out.push('\n');
        out.push_str(&columns(&tables));
    }
    out
}

/// Left-aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub(super) fn status(config: Option<&Path>, url: Option<&str>, watch: Option<u64>, json: bool) -> ExitCode {
    let target = match target(config, url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("capgate status: {e}");
            return ExitCode::from(2);
        }
    };
    loop {
        let body = match http_get(target.addr, "/status", target.token.as_deref()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("capgate status: {e}");
                return ExitCode::from(2);
            }
        };
        let text = if json {
            body
        } else {
            match serde_json::from_str::<Value>(&body) {
                Ok(v) => render(&v),
                Err(e) => {
                    eprintln!("capgate status: /status is not JSON ({e})");
                    return ExitCode::from(2);
                }
            }
        };
        let Some(every) = watch else {
            print!("{text}");
            return ExitCode::SUCCESS;
        };
        // Clear the screen and redraw; Ctrl-C ends it.
        print!("\x1b[2J\x1b[H{text}\n(every {every} s; Ctrl-C to stop)\n");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(every.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_renders_replicas_tables_and_problems() {
        let s = serde_json::json!({
            "site": "a", "policy_version": 2, "client_connections": 3,
            "primary": {"address": "127.0.0.1:5432", "state": "up", "rtt_ms": 0.42},
            "unknown_statements": {"relayed": 1, "refused": 0},
            "replicas": [{"name": "b", "state": "partitioned", "state_for_seconds": 12.34, "rtt_ms": null,
                "lag_seconds": 8.1, "pending_rows": 120, "drain_rate": 0.0, "conflicts": 0, "shipping": "running",
                "last_error": "heartbeat missed", "problems": ["max_prepared_transactions = 0"],
                "tables": [{"table": "public.page_views", "mode": "async", "lag_seconds": 8.1, "pending_rows": 120}]}]
        });
        let text = render(&s);
        assert!(text.starts_with("site a · primary 127.0.0.1:5432 up (0.4 ms) · policy v2 · 3 session(s)"), "{text}");
        assert!(text.contains("b        partitioned  12.3s  -    8.1s  120      0.0      0          running"), "{text}");
        assert!(text.contains("b: misconfigured: max_prepared_transactions = 0"), "{text}");
        assert!(text.contains("b: last error: heartbeat missed"), "{text}");
        assert!(text.contains("public.page_views  async  8.1s  120"), "{text}");
    }
}

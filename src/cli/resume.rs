//! `capgate resume --replica R --table T`: asks a running capgate (its admin listener, from
//! the configuration) to resume a halted table: it is copied again, then shipped; with
//! `--adopt`, taken back without a copy once it is equal on both sites (decision 0028).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;

pub fn resume(config: &Path, replica: &str, table: &str, adopt: bool) -> ExitCode {
    match run(config, replica, table, adopt) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capgate resume: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(file: &Path, replica: &str, table: &str, adopt: bool) -> Result<String, String> {
    let config = Config::load(file).map_err(|e| e.to_string())?;
    let mut addr: SocketAddr =
        config.admin.ok_or_else(|| format!("{} has no admin listener (admin = \"127.0.0.1:9930\"): resume needs it", file.display()))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    let token = config.admin_token.or_else(|| std::env::var("CAPGATE_ADMIN_TOKEN").ok());
    let mut path = format!("/tables/{}/resume?replica={}", encode(table), encode(replica));
    if adopt {
        path.push_str("&adopt=true");
    }
    let (code, body) = http_post(addr, &path, token.as_deref())?;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let message = doc["message"].as_str().map_or_else(|| body.trim().to_owned(), str::to_owned);
    match code {
        200 => Ok(message),
        401 => Err(format!("{addr}: the admin token is missing or wrong (admin_token, or CAPGATE_ADMIN_TOKEN)")),
        _ => Err(format!("{addr}: HTTP {code}: {message}")),
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 POST without a body to capgate's own admin listener.
fn http_post(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach capgate's admin listener at {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n").map_err(|e| format!("{addr}: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("{addr}: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_encoded_for_the_path() {
        assert_eq!(super::encode("public.t"), "public.t");
        assert_eq!(super::encode("\"My T\".x/y"), "%22My%20T%22.x%2Fy");
    }
}

//! The `capgate-link` control protocol: one command per line, one answer per line.
//!
//! Scripts and benchmarks drive a link running as its own process with lines such as
//! `latency 50ms`, `blackhole`, `restore` or `stats` (e.g. through `nc` or bash's
//! `/dev/tcp`). This module only parses and applies them, without I/O, so the protocol is
//! tested on strings.

use super::Link;
use crate::config::parse_duration;

/// What `help` answers: every command on one line.
const HELP: &str = "commands: latency DUR | jitter DUR | bandwidth BYTES_PER_SEC|off | blackhole [on|off] | \
                    reset | refuse on|off | restore | stats | help";

/// Applies one command line to `link`; the answer is `ok`, the stats, the help text, or
/// `error: ...` (never fatal: a typo must not kill a link a benchmark relies on).
pub fn command(link: &Link, line: &str) -> String {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let arg = words.next();
    if words.next().is_some() {
        return format!("error: too many words in `{}` ({HELP})", line.trim());
    }
    match (verb, arg) {
        ("latency", Some(d)) => on_duration(d, |d| link.set_latency(d)),
        ("jitter", Some(d)) => on_duration(d, |d| link.set_jitter(d)),
        ("bandwidth", Some("off" | "none" | "unlimited")) => {
            link.set_bandwidth(None);
            "ok".into()
        }
        ("bandwidth", Some(n)) => match n.parse::<u64>() {
            Ok(rate) if rate > 0 => {
                link.set_bandwidth(Some(rate));
                "ok".into()
            }
            _ => format!("error: bandwidth takes bytes per second (> 0) or `off`, found `{n}`"),
        },
        ("blackhole", None | Some("on")) => {
            link.set_blackhole(true);
            "ok".into()
        }
        ("blackhole", Some("off")) => {
            link.set_blackhole(false);
            "ok".into()
        }
        ("reset", None) => {
            link.reset();
            "ok".into()
        }
        ("refuse", Some(on @ ("on" | "off"))) => {
            link.refuse(on == "on");
            "ok".into()
        }
        ("restore", None) => {
            link.restore();
            "ok".into()
        }
        ("stats", None) => {
            let s = link.stats();
            format!(
                "connections={} open={} refused={} resets={} bytes_to_target={} bytes_to_client={} bytes_dropped={}",
                s.connections, s.open, s.refused, s.resets, s.bytes_to_target, s.bytes_to_client, s.bytes_dropped
            )
        }
        ("help", None) => HELP.into(),
        _ => format!("error: cannot understand `{}` ({HELP})", line.trim()),
    }
}

fn on_duration(text: &str, apply: impl FnOnce(std::time::Duration)) -> String {
    match parse_duration(text) {
        Ok(d) => {
            apply(d);
            "ok".into()
        }
        Err(e) => format!("error: {e}"),
    }
}

/// Serve the control protocol on `listener` for the life of the process: one thread per
/// control connection, one answer line per command line. Keep the listener on loopback: the
/// protocol has no authentication.
pub fn serve(link: std::sync::Arc<Link>, listener: std::net::TcpListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let link = link.clone();
        std::thread::spawn(move || serve_connection(&link, conn));
    }
}

/// Answers the commands of one control connection until it closes.
fn serve_connection(link: &Link, conn: std::net::TcpStream) {
    use std::io::{BufRead, BufReader, Write};
    let Ok(reader) = conn.try_clone() else { return };
    let mut out = conn;
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        if writeln!(out, "{}", command(link, &line)).is_err() {
            return;
        }
    }
}

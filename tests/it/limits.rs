//! Limits against slow and hostile clients (frontend/limits.rs): a startup trickled one byte
//! at a time is cut at `authentication_timeout`, an idle session is closed by
//! `idle_session_timeout` (not one inside a transaction), a client that never reads its
//! results holds capgate's memory flat while other clients are served, and `/metrics` counts
//! each. No timing is asserted: only what a client sees and how much memory capgate took.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::admin::get;
use crate::support::{query, startup, Proxy, Raw};

/// The value of an unlabelled counter line in the Prometheus text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

#[test]
fn a_trickled_startup_is_cut_at_the_authentication_timeout() {
    let proxy = Proxy::start("authentication_timeout = \"1s\"\nadmin = \"127.0.0.1:0\"");
    let admin = proxy.admin.expect("admin listener");
    let before = counter(&get(admin, "/metrics", None).1, "capgate_startup_timeouts_total");
    let mut slow = Raw::connect(proxy.addr);
    let packet = startup(&[("user", "postgres"), ("database", "postgres")]);
    let mut sent = 0;
    // One byte every 200 ms: the whole packet would take several seconds.
    for b in &packet {
        if slow.stream.write_all(&[*b]).is_err() {
            break;
        }
        sent += 1;
        // Meanwhile a well-behaved client is served.
        if sent == 3 {
            let mut ok = Raw::login(proxy.addr, "postgres");
            ok.send(&query("SELECT 1"));
            assert!(ok.until_ready().iter().any(|m| m.tag == b'D'), "a normal client was not served during the trickle");
        }
        std::thread::sleep(Duration::from_millis(200));
        if sent > 10 && slow.closed() {
            break;
        }
    }
    assert!(sent < packet.len(), "the whole trickled startup packet ({} bytes) was accepted", packet.len());
    assert!(slow.closed(), "the trickling connection is still open");
    let after = counter(&get(admin, "/metrics", None).1, "capgate_startup_timeouts_total");
    assert!(after > before, "capgate_startup_timeouts_total did not count it ({before} -> {after})");
}

#[test]
fn idle_sessions_are_closed_but_not_inside_a_transaction() {
    let proxy = Proxy::start("idle_session_timeout = \"1s\"\nadmin = \"127.0.0.1:0\"");
    let admin = proxy.admin.expect("admin listener");
    let before = counter(&get(admin, "/metrics", None).1, "capgate_idle_session_timeouts_total");
    let mut idle = Raw::login(proxy.addr, "postgres");
    let mut busy = Raw::login(proxy.addr, "postgres");
    busy.send(&query("BEGIN"));
    busy.until_ready();
    // The idle session is told why, as PostgreSQL's own idle_session_timeout does.
    let started = Instant::now();
    let msg = idle.recv().expect("the idle session was closed without an error message");
    assert_eq!((msg.tag, msg.field(b'C').as_deref()), (b'E', Some("57P05")), "{:?}", msg.field(b'M'));
    assert!(idle.closed());
    // A session that is active is not touched: one query every 300 ms for twice the timeout.
    let mut active = Raw::login(proxy.addr, "postgres");
    while started.elapsed() < Duration::from_secs(2) {
        active.send(&query("SELECT 1"));
        assert!(active.until_ready().iter().any(|m| m.tag == b'D'), "an active session was closed");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The one inside a transaction is still there and still in it.
    busy.send(&query("SELECT 1"));
    let replies = busy.until_ready();
    assert_eq!(replies.last().map(|m| m.body.clone()), Some(b"T".to_vec()), "{replies:?}");
    let after = counter(&get(admin, "/metrics", None).1, "capgate_idle_session_timeouts_total");
    assert!(after > before, "capgate_idle_session_timeouts_total did not count it ({before} -> {after})");
}

/// Resident memory of this process (the proxy runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn a_client_that_never_reads_holds_capgate_memory_flat() {
    let proxy = Proxy::start("");
    let before = rss_kib();
    let mut stuck = Raw::login(proxy.addr, "postgres");
    // About 2 GB of results that this client never reads.
    stuck.send(&query("SELECT repeat('x', 1000) FROM generate_series(1, 2000000)"));
    let mut peak = before;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        peak = peak.max(rss_kib());
    }
    // Another client is served meanwhile.
    let mut other = Raw::login(proxy.addr, "postgres");
    other.send(&query("SELECT 42"));
    assert!(other.until_ready().iter().any(|m| m.tag == b'D'), "another client was not served");
    // Socket buffers and one receive buffer per direction, not the result set.
    let grown = peak.saturating_sub(before);
    assert!(grown < 64 * 1024, "capgate's process grew by {grown} KiB while a client did not read");
    drop(stuck);
}

/// capgate run with an open-file limit of 64: once its descriptors are spent, a new client is
/// told why (53300, naming file descriptors) instead of hanging in the listen queue, the
/// sessions already open keep working, and new sessions are served again once some close.
#[test]
fn out_of_file_descriptors_new_clients_are_refused_and_existing_ones_served() {
    use std::process::{Command, Stdio};
    let port = capgate::testbed::free_port();
    let dir = crate::support::scratch("nofile");
    let config = dir.join("capgate.toml");
    let text = format!(
        "site = \"test\"\nlisten = \"127.0.0.1:{port}\"\n[primary]\nurl = \"{}\"\n",
        crate::support::primary().url("postgres", "postgres")
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new("bash")
        .args(["-c", "ulimit -n 64 && exec \"$0\" run --config \"$1\"", env!("CARGO_BIN_EXE_capgate"), config.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start capgate: {e}"));
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "capgate never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut open = Vec::new();
    let mut refusal = None;
    for _ in 0..64 {
        let mut raw = Raw::connect(addr);
        raw.send(&startup(&[("user", "postgres"), ("database", "postgres")]));
        let replies = raw.until_ready();
        match replies.first() {
            Some(m) if m.tag == b'R' => open.push(raw),
            Some(m) if m.tag == b'E' => {
                refusal = Some(m.clone());
                break;
            }
            other => panic!("neither served nor refused: {other:?}"),
        }
    }
    let refusal = refusal.unwrap_or_else(|| panic!("{} sessions opened under a 64-descriptor limit", open.len()));
    assert_eq!(refusal.field(b'C').as_deref(), Some("53300"));
    assert!(refusal.field(b'D').unwrap_or_default().contains("file descriptors"), "{:?}", refusal.field(b'D'));
    assert!(open.len() >= 5, "only {} sessions before running out", open.len());
    // The refusal above may come from the session (its client took the last descriptor, its
    // primary connection found none); with one more connection idle in its startup, the
    // next client finds none at all and is accepted with the descriptor kept in reserve.
    let idle = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    let mut raw = Raw::connect(addr);
    raw.send(&startup(&[("user", "postgres"), ("database", "postgres")]));
    let second = raw.until_ready();
    let second = second.first().unwrap_or_else(|| panic!("a client was closed without a word while capgate was out of descriptors"));
    assert_eq!(second.field(b'C').as_deref(), Some("53300"), "{:?}", second.field(b'M'));
    drop(idle);
    // The sessions already open are still served.
    for raw in open.iter_mut().take(3) {
        raw.send(&query("SELECT 1"));
        assert!(raw.until_ready().iter().any(|m| m.tag == b'D'), "an open session stopped being served");
    }
    // Once some close, new clients are served again.
    open.truncate(open.len() / 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut raw = Raw::connect(addr);
        raw.send(&startup(&[("user", "postgres"), ("database", "postgres")]));
        if raw.until_ready().first().is_some_and(|m| m.tag == b'R') {
            break;
        }
        assert!(Instant::now() < deadline, "new sessions are still refused after half the sessions closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

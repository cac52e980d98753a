//! The link's controls against a plain echo server, over real loopback sockets. Timing
//! assertions are lower bounds only (a slow machine makes things slower, never faster),
//! except where the bound is an order of magnitude away from the expected value.

use super::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

/// An echo server on 127.0.0.1:0 (one thread per connection), for the life of the process.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn connect(link: &Link) -> TcpStream {
    let s = TcpStream::connect(link.addr()).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let t = Instant::now();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    t.elapsed()
}

#[test]
fn relays_both_ways_and_counts() {
    let link = Link::start(echo_server()).unwrap();
    let mut s = connect(&link);
    round_trip(&mut s, b"hello");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut reader = s.try_clone().unwrap();
    let expect = big.clone();
    let check = thread::spawn(move || {
        let mut back = vec![0u8; expect.len()];
        reader.read_exact(&mut back).unwrap();
        assert!(back == expect, "bytes changed on the way");
    });
    s.write_all(&big).unwrap();
    check.join().unwrap();
    // Each direction counts a chunk after writing it, so the echo can arrive before the last
    // count: wait for the counters to settle.
    let t = Instant::now();
    while (link.stats().bytes_to_target, link.stats().bytes_to_client) != (300_005, 300_005) && t.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(5));
    }
    let stats = link.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.open, 1);
    assert_eq!(stats.bytes_to_target, 300_005);
    assert_eq!(stats.bytes_to_client, 300_005);
    // Our FIN travels through the link; the echo server closes; the link forgets it.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0);
    let t = Instant::now();
    while link.stats().open != 0 && t.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(link.stats().open, 0);
}

#[test]
fn latency_applies_at_once_to_an_open_connection() {
    let link = Link::start(echo_server()).unwrap();
    let mut s = connect(&link);
    round_trip(&mut s, b"warm");
    link.set_latency(Duration::from_millis(60));
    let rtt = round_trip(&mut s, b"slow");
    assert!(rtt >= Duration::from_millis(120), "round trip {rtt:?} with 60 ms each way");
    link.set_jitter(Duration::from_millis(20));
    let rtt = round_trip(&mut s, b"jittery");
    assert!(rtt >= Duration::from_millis(80), "round trip {rtt:?} with 60±20 ms each way");
    link.restore();
    round_trip(&mut s, b"fast again");
}

#[test]
fn latency_is_a_delay_line_not_a_queue_of_sleeps() {
    let link = Link::start(echo_server()).unwrap();
    link.set_latency(Duration::from_millis(100));
    let mut s = connect(&link);
    let mut reader = s.try_clone().unwrap();
    let t = Instant::now();
    let read = thread::spawn(move || {
        let mut back = vec![0u8; 40 * 1000];
        reader.read_exact(&mut back).unwrap();
        back
    });
    for i in 0..40u8 {
        s.write_all(&[i; 1000]).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    let back = read.join().unwrap();
    let took = t.elapsed();
    for (i, chunk) in back.chunks(1000).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i} out of order");
    }
    eprintln!("40 chunks, 5 ms apart, 100 ms each way: {took:?}");
    // Expected ~0.4 s; serialized per chunk it would be 40 × 200 ms = 8 s.
    assert!(took >= Duration::from_millis(200));
    assert!(took < Duration::from_secs(4), "chunks were serialized: {took:?}");
}

#[test]
fn bandwidth_cap_slows_a_stream() {
    let link = Link::start(echo_server()).unwrap();
    link.set_bandwidth(Some(200_000));
    let mut s = connect(&link);
    let t = Instant::now();
    round_trip(&mut s, &vec![7u8; 100_000]);
    let took = t.elapsed();
    eprintln!("100 kB echoed at 200 kB/s each way: {took:?}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    link.set_bandwidth(None);
    round_trip(&mut s, &vec![8u8; 100_000]);
}

#[test]
fn blackhole_drops_traffic_and_restore_resumes() {
    let link = Link::start(echo_server()).unwrap();
    let mut s = connect(&link);
    round_trip(&mut s, b"before");
    link.blackhole();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s.write_all(b"lost").unwrap();
    let err = s.read(&mut [0u8; 16]).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
    // New connections are accepted but hear nothing either.
    let mut other = connect(&link);
    other.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    other.write_all(b"x").unwrap();
    assert!(other.read(&mut [0u8; 1]).is_err());
    link.restore();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // "lost" was dropped, not delivered late: the next answer is exactly "after".
    round_trip(&mut s, b"after");
    assert!(link.stats().bytes_dropped >= 4);
}

#[test]
fn reset_sends_rst_to_open_connections_only() {
    let link = Link::start(echo_server()).unwrap();
    let mut s = connect(&link);
    round_trip(&mut s, b"hi");
    let t = Instant::now();
    link.reset();
    let err = s.read(&mut [0u8; 1]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut fresh = connect(&link);
    round_trip(&mut fresh, b"new connections work");
    assert_eq!(link.stats().resets, 1);
}

#[test]
fn refuse_closes_new_connections_and_keeps_old_ones() {
    let link = Link::start(echo_server()).unwrap();
    let mut old = connect(&link);
    // Until the link has accepted it, a connection counts as new.
    round_trip(&mut old, b"accepted");
    link.refuse(true);
    let mut s = connect(&link);
    let _ = s.write_all(b"x");
    let got = s.read(&mut [0u8; 1]);
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    round_trip(&mut old, b"still here");
    link.refuse(false);
    round_trip(&mut connect(&link), b"accepted again");
    assert_eq!(link.stats().refused, 1);
}

#[test]
fn unreachable_target_resets_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let port = crate::testbed::free_port();
    let link = Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).unwrap();
    let mut s = connect(&link);
    let got = s.read(&mut [0u8; 1]);
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
}

#[test]
fn control_commands() {
    let link = Link::start(echo_server()).unwrap();
    for line in ["latency 50ms", "jitter 5ms", "bandwidth 1000000", "blackhole", "refuse on", "restore"] {
        assert_eq!(command(&link, line), "ok", "{line}");
    }
    assert_eq!(*link.shared.faults.borrow(), Faults::default());
    assert_eq!(command(&link, "latency 20ms"), "ok");
    assert_eq!(link.shared.faults.borrow().latency, Duration::from_millis(20));
    assert_eq!(command(&link, "bandwidth off"), "ok");
    assert_eq!(command(&link, "blackhole off"), "ok");
    assert_eq!(command(&link, "reset"), "ok");
    assert!(command(&link, "stats").starts_with("connections=0 open=0 refused=0 resets=0 "));
    assert!(command(&link, "latency 50").starts_with("error:"));
    assert!(command(&link, "bandwidth 0").starts_with("error:"));
    assert!(command(&link, "refuse maybe").starts_with("error:"));
    assert!(command(&link, "explode").starts_with("error:"));
    assert!(command(&link, "help").contains("blackhole"));
}

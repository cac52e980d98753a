//! The fault link's own overhead: round-trip time added by relaying through a [`Link`]
//! with no faults configured, against a direct connection to the same echo server.
//!
//! A ping-pong of 16-byte messages, alternating blocks of direct and linked round trips so
//! that machine noise hits both alike; prints the median and p99 of each and what the link
//! adds. `cargo bench --bench link` measures (ITER round trips each, default 20000);
//! `cargo test --benches` runs a few hundred as a smoke test. Not criterion: criterion
//! reports means, and what matters here is the median and the tail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use capgate::testbed::link::Link;

fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let addr = listener.local_addr().expect("echo address");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn ping(s: &mut TcpStream) -> Duration {
    let msg = [42u8; 16];
    let mut back = [0u8; 16];
    let t = Instant::now();
    s.write_all(&msg).expect("ping");
    s.read_exact(&mut back).expect("pong");
    t.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let iters: usize = if bench { std::env::var("ITER").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000) } else { 400 };
    let echo = echo_server();
    let link = Link::start(echo).expect("start link");
    let connect = |addr| {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s
    };
    let (mut direct, mut linked) = (connect(echo), connect(link.addr()));
    for _ in 0..200 {
        ping(&mut direct);
        ping(&mut linked);
    }
    let (mut d, mut l) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for _ in 0..iters / 100 {
        (0..100).for_each(|_| d.push(ping(&mut direct)));
        (0..100).for_each(|_| l.push(ping(&mut linked)));
    }
    d.sort();
    l.sort();
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let (dm, d99, lm, l99) = (percentile(&d, 0.5), percentile(&d, 0.99), percentile(&l, 0.5), percentile(&l, 0.99));
    println!("link overhead, {} round trips of 16 bytes each way:", d.len());
    println!("  direct:     median {:7.1} µs   p99 {:7.1} µs", us(dm), us(d99));
    println!("  via link:   median {:7.1} µs   p99 {:7.1} µs", us(lm), us(l99));
    println!("  added:      median {:7.1} µs   p99 {:7.1} µs", us(lm) - us(dm), us(l99) - us(d99));
}

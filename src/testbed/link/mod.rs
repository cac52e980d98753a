//! A fault-injecting TCP link, in the spirit of Shopify's toxiproxy.
//!
//! capgate's guarantees are about what happens when the link between sites is slow or gone,
//! and this kernel has no `tc netem`, so the faults come from user space: a [`Link`] listens
//! on a loopback port, relays every accepted connection to a target, and lets a test change
//! the link at any moment with one call: latency each way (plus jitter), a bandwidth cap, a
//! silent blackhole, a reset of every connection, refusing new connections, and restore.
//! Every control takes effect at once, on existing connections as well as new ones.
//!
//! Latency is a delay line, not sleep-then-forward: bytes read at time `t` are written at
//! `t + latency` while later bytes keep being read, so a stream keeps its throughput.
//!
//! What it cannot imitate: the peer's kernel still ACKs what the link reads, so TCP
//! keepalives and `tcp_user_timeout` never notice a blackhole, and a connection attempt
//! during a blackhole succeeds (then hears nothing). Use [`crate::testbed::sites::NetnsSites`]
//! where kernel-level behaviour matters. The link must never listen on anything but the
//! address it is given (loopback in tests).

mod control;
mod relay;

pub use control::{command, serve as serve_control};

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use relay::Dial;

/// The link's current faults. One value, published through a `watch` channel, so every
/// pump sees a change at once and consistently (no half-applied combination).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Faults {
    /// Added to each direction: bytes read at `t` are written at `t + latency`.
    latency: Duration,
    /// Each chunk's delay is `latency ± jitter` (uniform, never below zero); order is kept.
    jitter: Duration,
    /// Bytes per second each direction may carry; None = as fast as the sockets go.
    bandwidth: Option<u64>,
    /// Forward nothing either way and drop what arrives meanwhile (silent partition).
    blackhole: bool,
    /// Close new connections at once with an RST.
    refuse: bool,
    /// Bumped by `reset()`: a connection accepted under an older epoch is torn down.
    reset_epoch: u64,
}

/// Counters shared by the accept loop and every pump; atomics so reading them never waits.
#[derive(Default)]
struct Counters {
    /// Connections accepted and relayed (refused ones not included).
    accepted: AtomicU64,
    /// Connections currently relayed.
    open: AtomicU64,
    /// Connections closed at once because the link refused them.
    refused: AtomicU64,
    /// Connections torn down with RST by `reset()`, by a failed dial or a peer's error.
    resets: AtomicU64,
    /// Bytes written to the target (client → target direction).
    to_target: AtomicU64,
    /// Bytes written back to clients (target → client direction).
    to_client: AtomicU64,
    /// Bytes read while blackholed and thrown away, both directions.
    dropped: AtomicU64,
}

/// State shared between the [`Link`] handle and the tasks on its runtime.
struct Shared {
    /// Where every control lands; pumps hold receivers.
    faults: watch::Sender<Faults>,
    /// What tests and the `stats` command read.
    counters: Counters,
}

/// A snapshot of a link's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connections accepted and relayed since start.
    pub connections: u64,
    /// Connections being relayed now.
    pub open: u64,
    /// Connections refused (`refuse(true)`).
    pub refused: u64,
    /// Connections closed with RST (reset, failed dial, an error on either side).
    pub resets: u64,
    /// Bytes delivered to the target.
    pub bytes_to_target: u64,
    /// Bytes delivered back to clients.
    pub bytes_to_client: u64,
    /// Bytes read during a blackhole and dropped.
    pub bytes_dropped: u64,
}

/// A fault-injecting TCP relay with its own runtime (see the module docs).
///
/// Usable from synchronous and async tests alike: the relay runs on a private tokio
/// runtime, and every control is a plain, non-async method.
pub struct Link {
    /// Where clients connect.
    addr: SocketAddr,
    /// Where every connection is relayed to.
    target: SocketAddr,
    /// Faults and counters, shared with the relay tasks.
    shared: Arc<Shared>,
    /// The private runtime (one worker thread); shut down in the background on drop so
    /// dropping a link inside an async test does not panic.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Link {
    /// Listens on 127.0.0.1 (a free port) and relays each connection to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Link> {
        Link::start_with(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), target, Dial::Direct)
    }

    /// As [`Link::start`], listening on `listen` (port 0 picks a free port).
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> io::Result<Link> {
        Link::start_with(listen, target, Dial::Direct)
    }

    /// As [`Link::start`], but connections to `target` are made from inside the network
    /// namespace `netns` (as `ip netns exec` would), while the link itself listens on the
    /// caller's loopback. Needs root. This is how a process in the root namespace reaches a
    /// server behind a veth pair.
    pub fn start_from_netns(target: SocketAddr, netns: &str) -> io::Result<Link> {
        let path = PathBuf::from("/run/netns").join(netns);
        if !path.exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no network namespace {netns}")));
        }
        Link::start_with(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), target, Dial::Netns(Arc::new(path)))
    }

    fn start_with(listen: SocketAddr, target: SocketAddr, dial: Dial) -> io::Result<Link> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("capgate-link").enable_all().build()?;
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let shared = Arc::new(Shared { faults: watch::Sender::new(Faults::default()), counters: Counters::default() });
        runtime.spawn(accept_loop(listener, target, dial, shared.clone()));
        Ok(Link { addr, target, shared, runtime: Some(runtime) })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are relayed to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Delay each direction by `latency` (so a round trip grows by twice that).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.faults.send_modify(|f| f.latency = latency);
    }

    /// Vary each chunk's delay uniformly within `latency ± jitter` (order is still kept).
    pub fn set_jitter(&self, jitter: Duration) {
        self.shared.faults.send_modify(|f| f.jitter = jitter);
    }

    /// Cap each direction at `bytes_per_sec`; None removes the cap.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.shared.faults.send_modify(|f| f.bandwidth = bytes_per_sec.map(|b| b.max(1)));
    }

    /// Silent partition: sockets stay open, nothing is forwarded either way, and what is
    /// sent meanwhile (including what is already in the delay line) is dropped.
    pub fn blackhole(&self) {
        self.set_blackhole(true);
    }

    /// Turns the blackhole on or off without touching the other faults.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.faults.send_modify(|f| f.blackhole = on);
    }

    /// Fast failure: closes every existing connection with RST on both sides. New
    /// connections are still accepted.
    pub fn reset(&self) {
        self.shared.faults.send_modify(|f| f.reset_epoch += 1);
    }

    /// While on, new connections are closed with RST right after they are accepted
    /// (existing connections are untouched).
    pub fn refuse(&self, on: bool) {
        self.shared.faults.send_modify(|f| f.refuse = on);
    }

    /// Back to a clean link: no latency, jitter, cap, blackhole or refusal.
    pub fn restore(&self) {
        self.shared.faults.send_modify(|f| *f = Faults { reset_epoch: f.reset_epoch, ..Faults::default() });
    }

    /// The counters as of now.
    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            connections: get(&c.accepted),
            open: get(&c.open),
            refused: get(&c.refused),
            resets: get(&c.resets),
            bytes_to_target: get(&c.to_target),
            bytes_to_client: get(&c.to_client),
            bytes_dropped: get(&c.dropped),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Accepts connections for the life of the link and hands each to its own relay task.
async fn accept_loop(listener: TcpListener, target: SocketAddr, dial: Dial, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::debug!("link {target}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let faults = shared.faults.borrow().clone();
        if faults.refuse {
            relay::abort(&client);
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(relay::serve(client, target, dial.clone(), shared.clone(), faults.reset_epoch));
    }
}

#[cfg(test)]
mod tests;

//! One relayed connection: dialing the target, two delay lines, and tearing it down.
//!
//! Each direction is a reader task feeding a bounded queue and a writer task draining it:
//! the reader stamps every chunk with the time it was read, the writer writes it once
//! `read_at + latency (± jitter)` has passed and the bandwidth cap allows. Both consult the
//! current [`Faults`] at every step, so a change applies to bytes already queued too.
//! A clean EOF travels through the delay line as a half-close; any error, and `reset()`,
//! closes both sockets with RST (SO_LINGER 0), as a failing network path would.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{Faults, Shared};

/// Largest chunk read at once; also the unit the delay line stamps.
const CHUNK: usize = 64 * 1024;

/// Chunks queued per direction: bounds the bytes in flight (CHUNK × QUEUE = 8 MB), much as
/// TCP windows bound a real path's bandwidth-delay product.
const QUEUE: usize = 128;

/// How long dialing the target may take before the client is reset.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a link reaches its target.
#[derive(Clone, Debug)]
pub(super) enum Dial {
    /// From the link's own network namespace.
    Direct,
    /// From inside the network namespace at this path (`/run/netns/NAME`).
    Netns(Arc<PathBuf>),
}

impl Dial {
    async fn connect(&self, target: SocketAddr) -> io::Result<TcpStream> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {target} timed out"));
        match self {
            Dial::Direct => tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await.map_err(|_| timed_out())?,
            Dial::Netns(path) => {
                // setns changes the calling thread's namespace: do it on a fresh thread that
                // ends right after, never on a runtime worker.
                let (tx, rx) = oneshot::channel();
                let path = path.clone();
                std::thread::Builder::new().name("capgate-link-dial".into()).spawn(move || {
                    let _ = tx.send(connect_in_netns(&path, target));
                })?;
                let stream = rx.await.map_err(|_| io::Error::other("the dialing thread died"))??;
                stream.set_nonblocking(true)?;
                TcpStream::from_std(stream)
            }
        }
    }
}

/// Connects to `target` from inside the network namespace `path` (called on a throwaway
/// thread).
fn connect_in_netns(path: &PathBuf, target: SocketAddr) -> io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(path)?;
    // SAFETY: setns only switches this thread's network namespace; the fd is valid for the
    // call and the thread exits once the socket is made.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::net::TcpStream::connect_timeout(&target, DIAL_TIMEOUT)
}

/// Makes the next close of `stream` send RST instead of FIN (SO_LINGER with timeout 0).
pub(super) fn abort(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket fd we own, with a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Half-closes `stream`: the peer reads EOF, the other direction keeps flowing.
fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    // SAFETY: shutdown(2) on a socket fd we own.
    if unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) } != 0 {
        let e = io::Error::last_os_error();
        // The peer may already be gone; the other direction reports that if it matters.
        if e.kind() != io::ErrorKind::NotConnected {
            return Err(e);
        }
    }
    Ok(())
}

/// Which way a pump carries bytes (selects the counter).
#[derive(Clone, Copy)]
enum Way {
    ToTarget,
    ToClient,
}

/// One chunk in the delay line; `data: None` is the sender's EOF.
struct Item {
    data: Option<Bytes>,
    /// When the reader got it: the delay is measured from here.
    read_at: Instant,
    /// This chunk's jitter draw in [-1, 1], scaled by the jitter current at write time.
    spread: f64,
}

/// Keeps `open` right however the relay task ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Relays one accepted connection until both sides are done, an error occurs, or the link
/// is reset (an epoch other than `epoch`).
pub(super) async fn serve(client: TcpStream, target: SocketAddr, dial: Dial, shared: Arc<Shared>, epoch: u64) {
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(shared.clone());
    let mut faults = shared.faults.subscribe();
    let upstream = match dial.connect(target).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!("link: cannot reach {target}: {e}");
            shared.counters.resets.fetch_add(1, Ordering::Relaxed);
            abort(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client, upstream) = (Arc::new(client), Arc::new(upstream));
    let mut tasks = JoinSet::new();
    pump(&mut tasks, client.clone(), upstream.clone(), &shared, Way::ToTarget);
    pump(&mut tasks, upstream.clone(), client.clone(), &shared, Way::ToClient);
    let clean = loop {
        if faults.borrow_and_update().reset_epoch != epoch {
            break false;
        }
        tokio::select! {
            done = tasks.join_next() => match done {
                None => break true,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    tracing::debug!("link to {target}: {e}");
                    break false;
                }
                Some(Err(_)) => break false,
            },
            changed = faults.changed() => if changed.is_err() { break false },
        }
    };
    if !clean {
        shared.counters.resets.fetch_add(1, Ordering::Relaxed);
        abort(&client);
        abort(&upstream);
        tasks.abort_all();
        // Wait for the tasks to drop their handles, so the sockets close (with RST) now.
        while tasks.join_next().await.is_some() {}
    }
}

/// Spawns the reader and writer of one direction.
fn pump(tasks: &mut JoinSet<io::Result<()>>, src: Arc<TcpStream>, dst: Arc<TcpStream>, shared: &Arc<Shared>, way: Way) {
    let (tx, rx) = mpsc::channel(QUEUE);
    tasks.spawn(collect(src, tx, shared.clone()));
    tasks.spawn(deliver(rx, dst, shared.clone(), way));
}

/// Reader: stamps and queues what arrives; drops it during a blackhole.
async fn collect(src: Arc<TcpStream>, tx: mpsc::Sender<Item>, shared: Arc<Shared>) -> io::Result<()> {
    let mut rng = Spread::seeded(src.as_raw_fd() as u64);
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(CHUNK);
        src.readable().await?;
        let n = match src.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let item = Item { data: None, read_at: Instant::now(), spread: rng.next() };
        if n == 0 {
            // The writer may be gone already (error path); nothing left to do either way.
            let _ = tx.send(item).await;
            return Ok(());
        }
        let chunk = buf.split().freeze();
        if shared.faults.borrow().blackhole {
            shared.counters.dropped.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        if tx.send(Item { data: Some(chunk), ..item }).await.is_err() {
            return Ok(());
        }
    }
}

/// Writer: releases each chunk when its delay has passed and the bandwidth cap allows.
async fn deliver(mut rx: mpsc::Receiver<Item>, dst: Arc<TcpStream>, shared: Arc<Shared>, way: Way) -> io::Result<()> {
    let mut faults = shared.faults.subscribe();
    let counter = match way {
        Way::ToTarget => &shared.counters.to_target,
        Way::ToClient => &shared.counters.to_client,
    };
    // Earliest time the bandwidth cap lets the next byte out.
    let mut next_free = Instant::now();
    while let Some(item) = rx.recv().await {
        let mut data = item.data;
        loop {
            let f = faults.borrow_and_update().clone();
            if f.blackhole {
                match &data {
                    Some(chunk) => {
                        shared.counters.dropped.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    // Hold the EOF until the blackhole lifts (or the link is reset).
                    None if faults.changed().await.is_ok() => continue,
                    None => return Ok(()),
                }
            }
            let mut due = item.read_at + delay(&f, item.spread);
            if f.bandwidth.is_some() {
                due = due.max(next_free);
            }
            let now = Instant::now();
            if now < due {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    changed = faults.changed() => if changed.is_err() { return Ok(()) },
                }
                continue;
            }
            let Some(chunk) = data.as_mut() else {
                return shutdown_write(&dst);
            };
            let n = match f.bandwidth {
                // Slices of about 20 ms worth keep a capped stream smooth.
                Some(rate) => chunk.len().min((rate / 50).max(256) as usize),
                None => chunk.len(),
            };
            write_all(&dst, &chunk[..n]).await?;
            counter.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(rate) = f.bandwidth {
                next_free = now.max(next_free) + Duration::from_secs_f64(n as f64 / rate as f64);
            }
            chunk.advance(n);
            if chunk.is_empty() {
                break;
            }
        }
    }
    Ok(())
}

/// The delay a chunk with jitter draw `spread` gets under `f`: latency ± jitter, never < 0.
fn delay(f: &Faults, spread: f64) -> Duration {
    if f.jitter.is_zero() {
        return f.latency;
    }
    let secs = f.latency.as_secs_f64() + spread * f.jitter.as_secs_f64();
    Duration::from_secs_f64(secs.max(0.0))
}

async fn write_all(dst: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        dst.writable().await?;
        match dst.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A small xorshift generator for jitter draws: jitter needs spread, not cryptography.
struct Spread(u64);

impl Spread {
    fn seeded(salt: u64) -> Spread {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Spread((nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// Uniform in [-1, 1].
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

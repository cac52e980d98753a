//! What every front end's listener does the same way: accept connections within
//! `max_connections` (a few over the limit are still served, so they can be told why), and on
//! shutdown stop accepting and let the sessions finish for up to `shutdown_timeout`. Sessions
//! run on the [`Workers`] threads, not on the runtime that accepts.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use super::limits::{LimitCounters, LIMITS};
use super::workers::Workers;
use crate::config::Config;

/// How many over-the-limit connections may be in the middle of being told "too many clients"
/// at once; beyond that they are closed without a word.
const MAX_REJECTING: usize = 64;

/// Why a connection is served only to be told it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` sessions are open.
    MaxConnections,
    /// The process is out of file descriptors (it keeps one in reserve to accept and tell).
    NoDescriptors,
}

/// One file descriptor held back: when accepting fails for want of descriptors, it is given
/// up so that the waiting connection can be accepted and told why, rather than left hanging
/// in the listen queue; it is taken again as soon as descriptors are free.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn take() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    /// Take the descriptor again if it was given up; false when none is free for it.
    fn refill(&mut self) -> bool {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
        self.0.is_some()
    }

    /// Give the descriptor up; false when there was none to give.
    fn release(&mut self) -> bool {
        self.0.take().is_some()
    }
}

/// Whether an accept error means the process or the system is out of file descriptors.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether a connection waits in `listener`'s queue. Linux's accept looks for a free
/// descriptor before it looks at the queue, so its "too many open files" says nothing about
/// whether anyone is waiting; a listening socket polls readable exactly when someone is.
fn connection_waiting(listener: &TcpListener) -> bool {
    let mut fd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one initialised pollfd for a descriptor the listener keeps open during the
    // call; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & libc::POLLIN != 0
}

/// Accept until `shutdown` resolves. Each connection is served by `serve(tcp, refusal, stop)`
/// on one of `workers` (its socket moved to that worker's event loop), holding one of
/// `sessions`' permits, or — past the limit, or out of file descriptors — one of a few
/// rejecting permits with the [`Refusal`] to tell it. `stop` turns true when the server shuts down. Keep `workers` until [`drain`] returns:
/// dropping them ends the sessions still running.
pub async fn accept_until<F, Fut>(
    listener: &TcpListener,
    workers: &Workers,
    sessions: &Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
    stop: &watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, Option<Refusal>, watch::Receiver<bool>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let mut reserve = Reserve::take();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if accepted.is_err() {
                    reserve.refill();
                }
                let (tcp, refusal) = match accepted {
                    // The connection took the descriptor the reserve wants back: it is the one
                    // in reserve now, so it is told why and closed, and the reserve refills
                    // then. Serving it would leave the next client hanging in the queue.
                    Ok((tcp, _)) if !reserve.refill() => (tcp, Some(Refusal::NoDescriptors)),
                    Ok((tcp, _)) => (tcp, None),
                    Err(e) if out_of_descriptors(&e) && !connection_waiting(listener) => {
                        // A session took the last descriptor and nobody waits to be told: keep
                        // the reserve (giving it up now would let a session take it, and the
                        // next client would hang in the listen queue) and look again shortly.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) if out_of_descriptors(&e) && reserve.release() => {
                        warn!("accept failed: {e}; refusing the connection with the descriptor kept in reserve");
                        LimitCounters::count(&LIMITS.accept_errors);
                        match tokio::time::timeout(std::time::Duration::from_millis(100), listener.accept()).await {
                            Ok(Ok((tcp, _))) => (tcp, Some(Refusal::NoDescriptors)),
                            _ => continue,
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        warn!("accept failed: {e}");
                        LimitCounters::count(&LIMITS.accept_errors);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let permit = match refusal {
                    None => sessions.clone().try_acquire_owned().ok(),
                    Some(_) => None,
                };
                let (permit, refusal) = match (permit, refusal) {
                    (Some(p), _) => (p, None),
                    (None, refusal) => {
                        LimitCounters::count(if refusal.is_some() { &LIMITS.no_descriptors } else { &LIMITS.over_limit });
                        match rejecting.clone().try_acquire_owned() {
                            Ok(p) => (p, Some(refusal.unwrap_or(Refusal::MaxConnections))),
                            Err(_) => continue,
                        }
                    }
                };
                let Ok(tcp) = tcp.into_std() else { continue };
                let (serve, stop) = (serve.clone(), stop.clone());
                workers.spawn(move || async move {
                    // Registered with the worker's own event loop, on its thread.
                    if let Ok(tcp) = TcpStream::from_std(tcp) {
                        serve(tcp, refusal, stop).await;
                    }
                    drop(permit);
                });
            }
            _ = &mut shutdown => return,
        }
    }
}

/// After accepting stopped: tell the sessions (`stop_tx`) and wait until they have all ended,
/// `shutdown_timeout` has passed, or `force` (a second signal) resolves.
pub async fn drain(config: &Config, sessions: &Semaphore, stop_tx: watch::Sender<bool>, force: impl Future<Output = ()>) {
    let active = config.max_connections - sessions.available_permits();
    info!(active, timeout = ?config.shutdown_timeout, "shutting down: no new connections; idle sessions close now, others at the end of their transaction");
    let _ = stop_tx.send(true);
    let drained = sessions.acquire_many(config.max_connections as u32);
    tokio::select! {
        _ = drained => info!("all sessions finished"),
        _ = tokio::time::sleep(config.shutdown_timeout) => warn!("shutdown_timeout reached; closing the remaining sessions"),
        _ = force => warn!("second signal: exiting at once"),
    }
}

//! What every front end's listener does the same way: accept connections within
//! `max_connections` (a few over the limit are still served, so they can be told why), and on
//! shutdown stop accepting and let the sessions finish for up to `shutdown_timeout`. Sessions
//! run on the [`Workers`] threads, not on the runtime that accepts.

use std::future::Future;
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

/// Accept until `shutdown` resolves. Each connection is served by `serve(tcp, over_limit,
/// stop)` on one of `workers` (its socket moved to that worker's event loop), holding one of
/// `sessions`' permits, or — past the limit — one of a few rejecting permits with `over_limit`
/// set. `stop` turns true when the server shuts down. Keep `workers` until [`drain`] returns:
/// dropping them ends the sessions still running.
pub async fn accept_until<F, Fut>(
    listener: &TcpListener,
    workers: &Workers,
    sessions: &Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
    stop: &watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, bool, watch::Receiver<bool>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        warn!("accept failed: {e}");
                        LimitCounters::count(&LIMITS.accept_errors);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (permit, over_limit) = match sessions.clone().try_acquire_owned() {
                    Ok(p) => (p, false),
                    Err(_) => {
                        LimitCounters::count(&LIMITS.over_limit);
                        match rejecting.clone().try_acquire_owned() {
                            Ok(p) => (p, true),
                            Err(_) => continue,
                        }
                    }
                };
                let Ok(tcp) = tcp.into_std() else { continue };
                let (serve, stop) = (serve.clone(), stop.clone());
                workers.spawn(move || async move {
                    // Registered with the worker's own event loop, on its thread.
                    if let Ok(tcp) = TcpStream::from_std(tcp) {
                        serve(tcp, over_limit, stop).await;
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

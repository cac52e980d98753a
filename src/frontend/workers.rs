//! Session workers: client sessions run on a few single-threaded runtimes, one OS thread
//! each, instead of on tokio's work-stealing runtime.
//!
//! Why: a relayed round trip is two reads and two writes; what it costs beyond them is how
//! often threads sleep and wake. On the work-stealing runtime, a socket event seen by one
//! worker thread regularly wakes another to run or steal the task, and `perf` showed most of
//! the proxy's CPU in the kernel's context-switch path (docs/performance.md). On a runtime
//! of its own, a session's sockets, timers and task all live on one thread: an event wakes
//! that thread only, and one `epoll_wait` serves every session of the worker that is ready.
//! Sessions are independent, so they need no stealing; each is placed on the worker with
//! the fewest sessions when it is accepted and stays there.
//!
//! Everything else (the accept loop, the admin listener, replica health, shippers) stays on
//! the main runtime; a session reaches it through channels and shared state as before.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The session workers of one listener. Dropping it stops them: each worker's runtime is
/// dropped on its own thread, which cancels the sessions still running there.
pub struct Workers {
    workers: Vec<Worker>,
}

/// One worker thread's runtime handle, how many sessions it runs, and what stops it.
struct Worker {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Workers {
    /// Start `n` worker threads (at least one), named `capgate-worker-N`.
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("capgate-worker-{i}")).spawn(move || {
                // Runs until the sender is dropped; the runtime's tasks are dropped with it.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
            workers.push(Worker { handle, sessions: Arc::new(AtomicUsize::new(0)), stop: Some(stop) });
        }
        Ok(Workers { workers })
    }

    /// Each worker's runtime handle (for its task count in `/metrics`).
    pub fn handles(&self) -> Vec<Handle> {
        self.workers.iter().map(|w| w.handle.clone()).collect()
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Run a session on the worker with the fewest sessions. `start` is called on that
    /// worker's thread, so the sockets and timers it creates belong to that worker.
    pub fn spawn<F, Fut>(&self, start: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self.workers.iter().min_by_key(|w| w.sessions.load(Ordering::Relaxed)) else { return };
        let count = Count::new(worker.sessions.clone());
        worker.handle.spawn(async move {
            let _count = count;
            start().await
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            drop(w.stop.take());
        }
    }
}

/// Counts a session on its worker for as long as it lives (also when it is cancelled).
struct Count(Arc<AtomicUsize>);

impl Count {
    fn new(n: Arc<AtomicUsize>) -> Count {
        n.fetch_add(1, Ordering::Relaxed);
        Count(n)
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

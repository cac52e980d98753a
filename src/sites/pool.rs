//! A small pool of replica connections for the replication code (sync transactions, the
//! async shipper).
//!
//! Deliberately minimal: a semaphore bounds the connections open at once, idle connections
//! wait in a stack (the most recently used first, so a quiet pool's spare connections age
//! out at the server's side rather than all staying warm), and a checkout either reuses one
//! or opens a new one — all under the caller's deadline. A connection that saw an error,
//! ran out of time or was marked broken is dropped, never returned: after a timeout its
//! protocol state is unknown (a reply may still be on its way), and a fresh login is cheap
//! next to replicating on a confused session. The pool does not consult the replica's
//! health; the caller decides what a partition means for its table.

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{with_deadline, BoxError, SiteError};
use super::Connector;

/// The connections of one replica. Cloning gives another handle on the same pool.
pub struct Pool<C: Connector> {
    inner: Arc<Inner<C>>,
}

impl<C: Connector> Clone for Pool<C> {
    fn clone(&self) -> Pool<C> {
        Pool { inner: self.inner.clone() }
    }
}

/// Shared by the pool and every checked-out connection (which returns itself on drop).
struct Inner<C: Connector> {
    /// The replica's name, for errors.
    replica: Arc<str>,
    connector: Arc<C>,
    /// Bounds the connections checked out at once; since a new connection is only opened
    /// when none is idle, it bounds the connections open as well.
    slots: Arc<Semaphore>,
    /// Open connections nobody uses. A std mutex: held only to push or pop.
    idle: Mutex<Vec<C::Conn>>,
    /// Upper bound on one login, whatever the caller's deadline.
    connect_timeout: Duration,
    size: usize,
}

impl<C: Connector> Pool<C> {
    pub(crate) fn new(replica: Arc<str>, connector: Arc<C>, size: usize, connect_timeout: Duration) -> Pool<C> {
        let size = size.max(1);
        Pool {
            inner: Arc::new(Inner {
                replica,
                connector,
                slots: Arc::new(Semaphore::new(size)),
                idle: Mutex::new(Vec::new()),
                connect_timeout,
                size,
            }),
        }
    }

    /// A connection to the replica within `deadline`: an idle one, or a new one once a slot
    /// is free. The error names the replica and what ran out of time (waiting for a slot,
    /// or connecting).
    pub async fn checkout(&self, deadline: Duration) -> Result<Pooled<C>, SiteError> {
        let started = Instant::now();
        let inner = &self.inner;
        let permit =
            with_deadline(&inner.replica, "waiting for a free replica connection", deadline, inner.slots.clone().acquire_owned()).await?;
        let reused = loop {
            let Some(conn) = self.lock_idle().pop() else { break None };
            if !C::is_closed(&conn) {
                break Some(conn);
            }
        };
        let conn = match reused {
            Some(conn) => conn,
            None => {
                let left = deadline.saturating_sub(started.elapsed()).min(inner.connect_timeout);
                with_deadline(&inner.replica, "connect", left, inner.connector.connect()).await?
            }
        };
        Ok(Pooled { conn: Some(conn), broken: AtomicBool::new(false), pool: inner.clone(), _permit: permit })
    }

    /// Connections open and unused right now.
    pub fn idle(&self) -> usize {
        self.lock_idle().len()
    }

    /// Connections checked out right now.
    pub fn in_use(&self) -> usize {
        self.inner.size - self.inner.slots.available_permits()
    }

    /// The most connections open at once.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Closes every idle connection (e.g. when the replica was found partitioned: they are
    /// likely dead, and a checkout should not find out the slow way).
    pub fn clear_idle(&self) {
        let drained: Vec<_> = std::mem::take(&mut *self.lock_idle());
        drop(drained);
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<C::Conn>> {
        self.inner.lock_idle()
    }
}

impl<C: Connector> Inner<C> {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<C::Conn>> {
        // A panic while pushing or popping cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A checked-out connection; goes back to the pool on drop unless it is broken. Derefs to
/// the protocol's connection type.
pub struct Pooled<C: Connector> {
    /// Always Some until drop.
    conn: Option<C::Conn>,
    /// Set by an error or a timeout in [`Pooled::run`], or by [`Pooled::mark_broken`].
    broken: AtomicBool,
    pool: Arc<Inner<C>>,
    /// The pool slot, released after the connection is returned or dropped.
    _permit: OwnedSemaphorePermit,
}

impl<C: Connector> Pooled<C> {
    /// Runs `operation` (a future using this connection) for at most `deadline`. On an
    /// error, a timeout, or when the caller stops waiting for it, the connection is marked
    /// broken, so it is dropped instead of returned. `name` names the operation in the error ("PREPARE TRANSACTION", "apply
    /// batch").
    pub async fn run<T, E>(&self, name: &str, deadline: Duration, operation: impl Future<Output = Result<T, E>>) -> Result<T, SiteError>
    where
        E: Into<BoxError>,
    {
        // Broken until the operation completes: if the caller's future is dropped midway (a
        // client went away), the connection may be inside a transaction or owe a reply, and
        // must never go back to the pool.
        let was_broken = self.broken.swap(true, Ordering::Relaxed);
        let result = with_deadline(&self.pool.replica, name, deadline, operation).await;
        if result.is_ok() && !was_broken {
            self.broken.store(false, Ordering::Relaxed);
        }
        result
    }

    /// Makes sure this connection is closed rather than reused.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed) || self.conn.as_ref().is_none_or(|c| C::is_closed(c))
    }

    /// The replica's name.
    pub fn replica(&self) -> &str {
        &self.pool.replica
    }
}

impl<C: Connector> Deref for Pooled<C> {
    type Target = C::Conn;

    fn deref(&self) -> &C::Conn {
        match &self.conn {
            Some(conn) => conn,
            // `conn` is only taken in drop.
            None => unreachable!("a pooled connection is used after drop"),
        }
    }
}

impl<C: Connector> Drop for Pooled<C> {
    fn drop(&mut self) {
        let broken = self.is_broken();
        if let Some(conn) = self.conn.take() {
            if !broken {
                self.pool.lock_idle().push(conn);
            }
        }
    }
}

//! What the limits against slow and hostile clients did, counted for `/metrics`.
//!
//! The limits themselves live where they act: `authentication_timeout` bounds everything from
//! accept to logged in (a startup trickling one byte a second included), `max_connections`
//! refuses the sessions beyond it with an error, `idle_session_timeout` closes sessions idle
//! outside a transaction, the relay pumps read only what they can write (a client that never
//! reads its results stops its primary connection, not capgate's memory), and the accept loop
//! keeps one file descriptor in reserve to accept and refuse a connection when the process is
//! out of them (then backs off). These counters are process-wide
//! (one capgate process serves one front end) so that every place can count without being
//! handed a registry.

use std::sync::atomic::{AtomicU64, Ordering};

/// Events counted since the process started.
#[derive(Debug, Default)]
pub struct LimitCounters {
    /// Connections closed because they were not logged in within `authentication_timeout`.
    pub startup_timeouts: AtomicU64,
    /// Sessions closed by `idle_session_timeout`.
    pub idle_timeouts: AtomicU64,
    /// Connections refused because `max_connections` sessions were open.
    pub over_limit: AtomicU64,
    /// Connections refused because the process was out of file descriptors.
    pub no_descriptors: AtomicU64,
    /// Failed accepts (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
}

/// The counters of this process.
pub static LIMITS: LimitCounters = LimitCounters {
    startup_timeouts: AtomicU64::new(0),
    idle_timeouts: AtomicU64::new(0),
    over_limit: AtomicU64::new(0),
    no_descriptors: AtomicU64::new(0),
    accept_errors: AtomicU64::new(0),
};

impl LimitCounters {
    /// Count one event.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

//! The health loop of one replica: the I/O around [`Tracker`].
//!
//! Every `heartbeat_interval` the loop produces at most one observation:
//! - with an open connection: a heartbeat under `heartbeat_timeout`, timed (answered), or
//!   missed (timeout or error: the connection is dropped and a new one is opened at once);
//! - while a connection is being opened: nothing until the attempt is older than
//!   `heartbeat_timeout`, then a miss per interval — a connect that hangs in a silent
//!   partition is counted like the heartbeats it prevents, so detection does not wait for
//!   the connect's own (longer) deadline;
//! - after an attempt failed: the failure again (refused: unreachable; no answer: missed)
//!   until the next attempt, which waits a backoff from one interval doubling to 2 s.
//!
//! Connecting runs in its own task so the loop keeps its rhythm; the loop ends when the
//! last [`HealthView`](super::HealthView) is gone or its task is aborted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::error::{with_deadline, SiteError};
use super::health::{Observation, State, Tracker, Transition};
use super::{AbortOnDrop, Connector, Settings, Status};

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The heartbeat connection, as far as the loop knows.
enum Link<C: Connector> {
    /// Open and answering (as of the last heartbeat).
    Open(C::Conn),
    /// Being opened by its own task since `started`.
    Opening { started: Instant, task: AbortOnDrop<Result<C::Conn, SiteError>> },
    /// The last attempt failed; `repeat` is reported each interval until `retry_at`.
    Down { retry_at: Instant, repeat: Observation },
}

/// Doubling delays between connection attempts, reset by a success.
struct Backoff {
    first: Duration,
    next: Duration,
}

impl Backoff {
    fn new(first: Duration) -> Backoff {
        let first = first.min(MAX_BACKOFF);
        Backoff { first, next: first }
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        d
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Runs the health loop of `replica` until the views are gone (or the task is aborted).
/// `partitioned` runs when the replica enters or leaves `partitioned`: the pool's idle
/// connections were opened before the cut and may be dead without knowing it (a blackholed
/// TCP flow), and the first commit after the heal must not find out by its deadline.
pub(super) async fn run<C: Connector>(
    replica: Arc<str>,
    connector: Arc<C>,
    settings: Settings,
    tx: watch::Sender<Status>,
    partitioned: impl Fn() + Send + 'static,
) {
    let mut tracker = Tracker::new(settings.thresholds);
    let mut backoff = Backoff::new(settings.heartbeat_interval);
    let mut link = open(&replica, &connector, &settings);
    let mut ticker = tokio::time::interval(settings.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        let (observation, error, opened) = tick(&replica, &connector, &settings, &mut link, &mut backoff).await;
        if opened {
            tx.send_modify(|s| s.connects += 1);
        }
        let Some(observation) = observation else { continue };
        let transition = tracker.observe(observation);
        if let Some(t) = &transition {
            log_transition(&replica, t, error.as_deref());
            if t.to == State::Partitioned || t.from == State::Partitioned {
                partitioned();
            }
        }
        let now = Instant::now();
        tx.send_modify(|s| {
            s.state = tracker.state();
            s.transitions = tracker.transitions();
            s.last_rtt = tracker.last_rtt();
            s.smoothed_rtt = tracker.smoothed_rtt();
            if let Observation::Answered(_) = observation {
                s.last_heartbeat = Some(now);
            }
            if let Some(e) = error {
                s.last_error = Some(e.into());
            }
            if let Some(t) = transition {
                s.previous = Some(t.from);
                s.since = now;
                s.last_transition = Some(format!("{} → {}: {}", t.from, t.to, t.reason).into());
            }
        });
    }
}

/// One heartbeat interval: what it showed (if anything), the error text that goes with a
/// failure, and whether a new connection was opened.
async fn tick<C: Connector>(
    replica: &str,
    connector: &Arc<C>,
    settings: &Settings,
    link: &mut Link<C>,
    backoff: &mut Backoff,
) -> (Option<Observation>, Option<String>, bool) {
    let mut opened = false;
    // Collect a finished connection attempt.
    if let Link::Opening { task, .. } = link {
        if task.0.is_finished() {
            let result = match (&mut task.0).await {
                Ok(result) => result,
                Err(e) => Err(SiteError::failed(replica, "connect", format!("the connecting task failed: {e}"))),
            };
            match result {
                Ok(conn) => {
                    backoff.reset();
                    opened = true;
                    *link = Link::Open(conn);
                }
                Err(e) => {
                    // No answer in time is a miss; an answer that says no is unreachable.
                    let repeat = if e.is_deadline() { Observation::Missed } else { Observation::Unreachable };
                    *link = Link::Down { retry_at: Instant::now() + backoff.next(), repeat };
                    return (Some(repeat), Some(e.to_string()), false);
                }
            }
        }
    }
    match link {
        Link::Open(conn) => {
            let started = Instant::now();
            let beat = with_deadline(replica, "heartbeat", settings.heartbeat_timeout, connector.heartbeat(conn)).await;
            match beat {
                Ok(()) if !C::is_closed(conn) => (Some(Observation::Answered(started.elapsed())), None, opened),
                Ok(()) => {
                    *link = open(replica, connector, settings);
                    (Some(Observation::Missed), Some(format!("replica `{replica}`: the heartbeat connection closed")), opened)
                }
                Err(e) => {
                    // The connection is in an unknown state (a reply may still come): drop
                    // it and open a new one at once.
                    *link = open(replica, connector, settings);
                    (Some(Observation::Missed), Some(e.to_string()), opened)
                }
            }
        }
        Link::Opening { started, .. } => {
            let waited = started.elapsed();
            if waited < settings.heartbeat_timeout {
                return (None, None, opened);
            }
            let error = format!("replica `{replica}`: connect has not finished after {:?}", round_ms(waited));
            (Some(Observation::Missed), Some(error), opened)
        }
        Link::Down { retry_at, repeat } => {
            let repeat = *repeat;
            if Instant::now() >= *retry_at {
                *link = open(replica, connector, settings);
            }
            (Some(repeat), None, opened)
        }
    }
}

/// Starts opening a heartbeat connection in its own task, under the connect deadline.
fn open<C: Connector>(replica: &str, connector: &Arc<C>, settings: &Settings) -> Link<C> {
    let (replica, connector, deadline) = (replica.to_owned(), connector.clone(), settings.connect_timeout);
    let task = tokio::spawn(async move { with_deadline(&replica, "connect", deadline, connector.connect()).await });
    Link::Opening { started: Instant::now(), task: AbortOnDrop(task) }
}

fn log_transition(replica: &str, t: &Transition, error: Option<&str>) {
    let error = error.unwrap_or("");
    match t.to {
        State::Partitioned => tracing::warn!(replica, from = %t.from, reason = %t.reason, error, "replica partitioned"),
        State::Healthy => tracing::info!(replica, from = %t.from, reason = %t.reason, "replica healthy"),
        _ => tracing::info!(replica, from = %t.from, to = %t.to, reason = %t.reason, error, "replica health changed"),
    }
}

/// `d` to whole milliseconds, for messages.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250));
        let got: Vec<_> = (0..5).map(|_| b.next().as_millis()).collect();
        assert_eq!(got, [250, 500, 1000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(250));
        assert_eq!(Backoff::new(Duration::from_secs(10)).next(), MAX_BACKOFF);
    }
}

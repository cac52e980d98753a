//! What the rest of capgate sees of a replica's health: a [`Status`] snapshot published by
//! the health loop through a `watch` channel.
//!
//! Reading is a short read-lock and a clone of a few words (the error text is an `Arc`), so
//! the hot path can look at the state on every write; the admin endpoints read the same
//! snapshot. Waiting (`on_partition = "block"`) is a `watch` wait bounded by a deadline:
//! it never polls and never waits past its timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::error::SiteError;
use super::health::State;

/// One replica's health as of the last heartbeat.
#[derive(Clone, Debug)]
pub struct Status {
    /// The state machine's current state.
    pub state: State,
    /// The state before this one (None before the first transition): a healthy replica
    /// whose previous state is Healing has come back from a partition.
    pub previous: Option<State>,
    /// When the current state began (monotonic): "partitioned for 42 s".
    pub since: Instant,
    /// State changes since the health loop started.
    pub transitions: u64,
    /// The round trip of the last answered heartbeat.
    pub last_rtt: Option<Duration>,
    /// The weighted average round trip (weight 1/8 per sample).
    pub smoothed_rtt: Option<Duration>,
    /// When the last heartbeat was answered.
    pub last_heartbeat: Option<Instant>,
    /// Heartbeat connections opened since start (1 when the link never broke).
    pub connects: u64,
    /// The last failure (missed heartbeat, refused connection...), kept after recovery so
    /// an operator can see what the last partition was.
    pub last_error: Option<Arc<str>>,
    /// Why the last transition happened.
    pub last_transition: Option<Arc<str>>,
}

impl Status {
    /// The status of a replica before its first heartbeat.
    pub(crate) fn initial(now: Instant) -> Status {
        Status {
            state: State::Suspect,
            previous: None,
            since: now,
            transitions: 0,
            last_rtt: None,
            smoothed_rtt: None,
            last_heartbeat: None,
            connects: 0,
            last_error: None,
            last_transition: None,
        }
    }

    /// How long the replica has been in its current state.
    pub fn in_state(&self) -> Duration {
        self.since.elapsed()
    }
}

/// A cheap, cloneable handle on one replica's health.
#[derive(Clone, Debug)]
pub struct HealthView {
    /// The replica's configured name, for errors.
    replica: Arc<str>,
    /// Published by the health loop after every heartbeat interval.
    rx: watch::Receiver<Status>,
}

impl HealthView {
    pub(crate) fn new(replica: Arc<str>, rx: watch::Receiver<Status>) -> HealthView {
        HealthView { replica, rx }
    }

    /// The replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The current state (the hot path's question).
    pub fn state(&self) -> State {
        self.rx.borrow().state
    }

    /// A snapshot of everything known.
    pub fn status(&self) -> Status {
        self.rx.borrow().clone()
    }

    /// Waits until `pred` holds for the status (checked at once, then after every update),
    /// for at most `timeout`. The error names the replica, what was awaited and the state
    /// it was left in.
    pub async fn wait_for(&self, what: &str, timeout: Duration, mut pred: impl FnMut(&Status) -> bool) -> Result<Status, SiteError> {
        let mut rx = self.rx.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s))).await.map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(_)) => Err(SiteError::Stopped { replica: self.replica.to_string() }),
            Err(_) => {
                let s = self.status();
                let mut operation = format!("waiting for {what} (it is {} since {:?} ago", s.state, s.in_state());
                if let Some(e) = &s.last_error {
                    operation.push_str(&format!("; last error: {e}"));
                }
                operation.push(')');
                Err(SiteError::Deadline { replica: self.replica.to_string(), operation, deadline: timeout })
            }
        }
    }

    /// Waits until the replica is available (healthy or suspect): what a sync write with
    /// `on_partition = "block"` does, up to its `partition_timeout`.
    pub async fn wait_available(&self, timeout: Duration) -> Result<Status, SiteError> {
        self.wait_for("the replica to become available", timeout, |s| s.state.is_available()).await
    }

    /// Waits until the replica is in `state`.
    pub async fn wait_state(&self, state: State, timeout: Duration) -> Result<Status, SiteError> {
        self.wait_for(&format!("state {state}"), timeout, |s| s.state == state).await
    }

    /// Resolves once the replica is partitioned (never, if the health loop stops first): what
    /// a shipper races its work against, to drop the replica's connection at once.
    pub async fn until_partitioned(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|s| s.state == State::Partitioned).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits for the next state change (round-trip updates do not count).
    pub async fn changed(&self, timeout: Duration) -> Result<Status, SiteError> {
        let seen = self.rx.borrow().transitions;
        self.wait_for("a change of state", timeout, |s| s.transitions != seen).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_see_updates_and_time_out_with_the_state() {
        let (tx, rx) = watch::channel(Status::initial(Instant::now()));
        let view = HealthView::new("b".into(), rx);
        assert_eq!(view.state(), State::Suspect);
        let err = view.wait_available(Duration::ZERO).await.map(|_| ());
        assert!(err.is_ok(), "suspect counts as available");
        tx.send_modify(|s| {
            s.state = State::Partitioned;
            s.transitions = 1;
            s.last_error = Some("refused".into());
        });
        let err = view.wait_available(Duration::from_millis(20)).await.unwrap_err();
        assert!(err.is_deadline());
        let text = err.to_string();
        assert!(text.contains("replica `b`") && text.contains("it is partitioned") && text.contains("refused"), "{text}");

        let waiter = {
            let view = view.clone();
            tokio::spawn(async move { view.changed(Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        tx.send_modify(|s| s.last_rtt = Some(Duration::from_millis(1)));
        tx.send_modify(|s| {
            s.state = State::Healing;
            s.transitions = 2;
        });
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got.state, State::Healing);
        drop(tx);
        let err = view.wait_state(State::Healthy, Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(err, SiteError::Stopped { .. }), "{err}");
    }
}

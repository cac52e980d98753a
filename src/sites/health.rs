//! The replica health state machine, without I/O.
//!
//! The health loop turns every heartbeat interval into one [`Observation`] (answered with
//! some round-trip time, missed, or the replica could not be reached at all) and feeds it to
//! a [`Tracker`], which decides the [`State`]. Nothing here reads a clock, opens a socket or
//! knows which database the replica runs, so the rules are tested on plain sequences of
//! observations and a MySQL replica uses them unchanged.
//!
//! The rules (docs/decisions/0004-replica-health.md says why):
//! - a heartbeat is *bad* when it was missed, when the replica could not be reached, or when
//!   it was answered slower than `partition_latency` (or the smoothed RTT is above it):
//!   latency is a form of partition;
//! - Healthy → Suspect on the first bad heartbeat; Suspect → Healthy on the next good one;
//! - Suspect → Partitioned after `partition_after` bad heartbeats in a row, or at once when a
//!   connection cannot be opened (refused, reset, authentication failed);
//! - Partitioned → Healing on a good heartbeat; Healing → Healthy after `heal_after` good
//!   heartbeats in a row; any bad heartbeat while healing goes back to Partitioned. This
//!   hysteresis keeps a link that works one heartbeat in two from flapping.

use std::fmt;
use std::time::Duration;

/// Where a replica stands, as the replication code sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Heartbeats come back in time.
    Healthy,
    /// Something went wrong recently (a missed or slow heartbeat), or nothing is known yet;
    /// writes still go to the replica, under their own deadlines.
    Suspect,
    /// The replica is treated as unreachable: sync writes follow their `on_partition`.
    Partitioned,
    /// Heartbeats succeed again but have not yet been good long enough to trust.
    Healing,
}

impl State {
    /// Whether replication should try the replica now. Healing is not available yet: a
    /// link must prove itself for `heal_after` heartbeats before sync writes rely on it.
    pub fn is_available(self) -> bool {
        matches!(self, State::Healthy | State::Suspect)
    }

    /// Lower-case name, as in `/status` and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Suspect => "suspect",
            State::Partitioned => "partitioned",
            State::Healing => "healing",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one heartbeat interval showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The heartbeat came back after this round trip.
    Answered(Duration),
    /// No answer within the heartbeat deadline, or the connection broke during it.
    Missed,
    /// A connection could not be opened (refused, reset, authentication failed).
    Unreachable,
}

/// The thresholds of one replica (from its `[[replicas]]` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// A round trip slower than this is as bad as a missed heartbeat.
    pub partition_latency: Duration,
    /// Bad heartbeats in a row that make a suspect replica partitioned (at least 1).
    pub partition_after: u32,
    /// Good heartbeats in a row that make a healing replica healthy (at least 1).
    pub heal_after: u32,
}

/// Why a transition happened: for logs, `last_error` and the admin views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Answered, but slower than `partition_latency` (this sample, or the smoothed RTT).
    Slow { rtt: Duration, smoothed: Duration, limit: Duration },
    /// This many bad heartbeats in a row.
    Missed { in_a_row: u32 },
    /// A connection could not be opened.
    Unreachable,
    /// This many good heartbeats in a row.
    Answered { in_a_row: u32 },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Slow { rtt, smoothed, limit } => {
                write!(f, "round trip {rtt:?} (smoothed {smoothed:?}) is above partition_latency {limit:?}")
            }
            Reason::Missed { in_a_row: 1 } => f.write_str("a heartbeat was missed"),
            Reason::Missed { in_a_row } => write!(f, "{in_a_row} bad heartbeats in a row"),
            Reason::Unreachable => f.write_str("a connection could not be opened"),
            Reason::Answered { in_a_row: 1 } => f.write_str("a heartbeat was answered in time"),
            Reason::Answered { in_a_row } => write!(f, "{in_a_row} good heartbeats in a row"),
        }
    }
}

/// A change of state, returned by [`Tracker::observe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

/// The state machine of one replica: the current state, the streaks that move it, and the
/// round-trip statistics that judge "slow".
#[derive(Clone, Debug)]
pub struct Tracker {
    thresholds: Thresholds,
    state: State,
    /// Bad heartbeats since the last good one.
    bad_in_a_row: u32,
    /// Good heartbeats since the last bad one.
    good_in_a_row: u32,
    /// The last answered heartbeat's round trip.
    last_rtt: Option<Duration>,
    /// Exponentially weighted average of answered round trips (weight 1/8, as TCP's SRTT):
    /// a link that jitters around the threshold is judged by its average, not its luckiest
    /// sample.
    smoothed_rtt: Option<Duration>,
    /// State changes since start.
    transitions: u64,
}

impl Tracker {
    /// A replica nothing is known about yet: Suspect until its first heartbeat.
    pub fn new(thresholds: Thresholds) -> Tracker {
        let thresholds =
            Thresholds { partition_after: thresholds.partition_after.max(1), heal_after: thresholds.heal_after.max(1), ..thresholds };
        Tracker { thresholds, state: State::Suspect, bad_in_a_row: 0, good_in_a_row: 0, last_rtt: None, smoothed_rtt: None, transitions: 0 }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    pub fn smoothed_rtt(&self) -> Option<Duration> {
        self.smoothed_rtt
    }

    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Takes one observation; returns the transition it caused, if any.
    pub fn observe(&mut self, observation: Observation) -> Option<Transition> {
        let bad = match observation {
            Observation::Answered(rtt) => {
                self.last_rtt = Some(rtt);
                let smoothed = match self.smoothed_rtt {
                    None => rtt,
                    Some(s) => (s * 7 + rtt) / 8,
                };
                self.smoothed_rtt = Some(smoothed);
                let limit = self.thresholds.partition_latency;
                (rtt > limit || smoothed > limit).then_some(Reason::Slow { rtt, smoothed, limit })
            }
            Observation::Missed => Some(Reason::Missed { in_a_row: self.bad_in_a_row + 1 }),
            Observation::Unreachable => Some(Reason::Unreachable),
        };
        let next = match bad {
            Some(reason) => self.on_bad(reason),
            None => self.on_good(),
        };
        let (to, reason) = next?;
        let from = self.state;
        self.state = to;
        self.transitions += 1;
        Some(Transition { from, to, reason })
    }

    /// A bad heartbeat: the next state and why, if it changes.
    fn on_bad(&mut self, reason: Reason) -> Option<(State, Reason)> {
        self.good_in_a_row = 0;
        self.bad_in_a_row = self.bad_in_a_row.saturating_add(1);
        let in_a_row = self.bad_in_a_row;
        let partitioned = reason == Reason::Unreachable || in_a_row >= self.thresholds.partition_after;
        // Slow and unreachable name themselves; a miss names the whole streak (which may
        // have begun with slow answers).
        let reason = match reason {
            Reason::Missed { .. } => Reason::Missed { in_a_row },
            other => other,
        };
        match self.state {
            State::Healthy if partitioned => Some((State::Partitioned, reason)),
            State::Healthy => Some((State::Suspect, reason)),
            State::Suspect if partitioned => Some((State::Partitioned, reason)),
            State::Suspect | State::Partitioned => None,
            State::Healing => Some((State::Partitioned, reason)),
        }
    }

    /// A good heartbeat: the next state and why, if it changes.
    fn on_good(&mut self) -> Option<(State, Reason)> {
        self.bad_in_a_row = 0;
        self.good_in_a_row = self.good_in_a_row.saturating_add(1);
        let reason = Reason::Answered { in_a_row: self.good_in_a_row };
        match self.state {
            State::Healthy => None,
            State::Suspect => Some((State::Healthy, reason)),
            State::Partitioned if self.good_in_a_row >= self.thresholds.heal_after => Some((State::Healthy, reason)),
            State::Partitioned => Some((State::Healing, reason)),
            State::Healing if self.good_in_a_row >= self.thresholds.heal_after => Some((State::Healthy, reason)),
            State::Healing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Observation::{Answered, Missed, Unreachable};
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn tracker() -> Tracker {
        Tracker::new(Thresholds { partition_latency: 100 * MS, partition_after: 3, heal_after: 4 })
    }

    /// Feeds `observations` and returns the state after each one.
    fn run(t: &mut Tracker, observations: &[Observation]) -> Vec<State> {
        observations
            .iter()
            .map(|o| {
                t.observe(*o);
                t.state()
            })
            .collect()
    }

    fn fast() -> Observation {
        Answered(MS)
    }

    use State::{Healing, Healthy, Partitioned, Suspect};

    #[test]
    fn starts_suspect_and_one_answer_makes_it_healthy() {
        let mut t = tracker();
        assert_eq!(t.state(), Suspect);
        let tr = t.observe(fast()).expect("a transition");
        assert_eq!((tr.from, tr.to), (Suspect, Healthy));
        assert_eq!(t.transitions(), 1);
        assert_eq!(t.observe(fast()), None, "healthy stays healthy");
    }

    #[test]
    fn a_single_miss_is_only_suspect_and_recovers_at_once() {
        let mut t = tracker();
        assert_eq!(run(&mut t, &[fast(), Missed, fast()]), [Healthy, Suspect, Healthy]);
    }

    #[test]
    fn consecutive_misses_partition() {
        let mut t = tracker();
        assert_eq!(run(&mut t, &[fast(), Missed, Missed, Missed, Missed]), [Healthy, Suspect, Suspect, Partitioned, Partitioned]);
        // A miss and an answer alternating never reaches three in a row.
        let mut t = tracker();
        let states = run(&mut t, &[fast(), Missed, fast(), Missed, Missed, fast(), Missed, Missed]);
        assert!(!states.contains(&Partitioned), "{states:?}");
    }

    #[test]
    fn the_streak_reason_counts_the_misses() {
        let mut t = tracker();
        run(&mut t, &[fast(), Missed, Missed]);
        let tr = t.observe(Missed).expect("partitioned");
        assert_eq!(tr.reason, Reason::Missed { in_a_row: 3 });
        assert_eq!(tr.reason.to_string(), "3 bad heartbeats in a row");
    }

    #[test]
    fn unreachable_partitions_at_once() {
        let mut t = tracker();
        t.observe(fast());
        let tr = t.observe(Unreachable).expect("a transition");
        assert_eq!((tr.from, tr.to, tr.reason), (Healthy, Partitioned, Reason::Unreachable));
        let mut t = tracker();
        assert_eq!(run(&mut t, &[Unreachable]), [Partitioned], "unreachable from the start");
    }

    #[test]
    fn slow_answers_count_as_misses() {
        let mut t = tracker();
        let slow = Answered(300 * MS);
        assert_eq!(run(&mut t, &[fast(), slow, slow, slow]), [Healthy, Suspect, Suspect, Partitioned]);
        let tr = t.transitions();
        assert_eq!(t.last_rtt(), Some(300 * MS));
        assert!(t.smoothed_rtt().is_some_and(|s| s > MS));
        assert_eq!(tr, 3);
    }

    #[test]
    fn the_smoothed_rtt_keeps_a_jittery_slow_link_partitioned() {
        let mut t = tracker();
        // Many slow answers push the average far above the limit.
        for _ in 0..20 {
            t.observe(Answered(400 * MS));
        }
        assert_eq!(t.state(), Partitioned);
        // Lucky fast samples under a high average are still slow.
        let states = run(&mut t, &[Answered(50 * MS), Answered(400 * MS), Answered(50 * MS)]);
        assert_eq!(states, [Partitioned, Partitioned, Partitioned]);
    }

    #[test]
    fn healing_needs_heal_after_good_heartbeats() {
        let mut t = tracker();
        run(&mut t, &[Missed, Missed, Missed]);
        assert_eq!(t.state(), Partitioned);
        assert_eq!(run(&mut t, &[fast(), fast(), fast(), fast(), fast()]), [Healing, Healing, Healing, Healthy, Healthy]);
    }

    #[test]
    fn a_bad_heartbeat_while_healing_goes_back_to_partitioned() {
        let mut t = tracker();
        run(&mut t, &[Unreachable]);
        assert_eq!(run(&mut t, &[fast(), fast(), fast(), Missed]), [Healing, Healing, Healing, Partitioned]);
        // And the count starts over.
        assert_eq!(run(&mut t, &[fast(), fast(), fast(), fast()]), [Healing, Healing, Healing, Healthy]);
    }

    #[test]
    fn a_link_that_works_every_other_heartbeat_does_not_flap_to_healthy() {
        let mut t = tracker();
        run(&mut t, &[Unreachable]);
        let states = run(&mut t, &[fast(), Missed, fast(), Missed, fast(), Missed, fast(), Missed]);
        assert!(!states.contains(&Healthy), "{states:?}");
        assert!(!states.contains(&Suspect), "{states:?}");
    }

    #[test]
    fn recovering_latency_heals_once_the_average_falls() {
        let mut t = tracker();
        for _ in 0..4 {
            t.observe(Answered(300 * MS));
        }
        assert_eq!(t.state(), Partitioned);
        let mut states = Vec::new();
        for _ in 0..30 {
            t.observe(fast());
            states.push(t.state());
        }
        // Still slow by average for a few samples, then four good ones.
        assert_eq!(states[0], Partitioned);
        assert_eq!(states.last(), Some(&Healthy));
        let first_healing = states.iter().position(|s| *s == Healing).expect("heals");
        let first_healthy = states.iter().position(|s| *s == Healthy).expect("healthy");
        assert_eq!(first_healthy - first_healing, 3);
    }

    #[test]
    fn thresholds_of_one_and_zero() {
        let mut t = Tracker::new(Thresholds { partition_latency: 100 * MS, partition_after: 0, heal_after: 0 });
        assert_eq!(t.thresholds().partition_after, 1);
        assert_eq!(run(&mut t, &[fast(), Missed, fast()]), [Healthy, Partitioned, Healthy]);
    }

    #[test]
    fn availability_and_names() {
        assert!(Healthy.is_available() && Suspect.is_available());
        assert!(!Partitioned.is_available() && !Healing.is_available());
        assert_eq!(Partitioned.to_string(), "partitioned");
        let slow = Reason::Slow { rtt: 300 * MS, smoothed: 120 * MS, limit: 100 * MS };
        assert!(slow.to_string().contains("above partition_latency"));
    }
}

//! The pace of the chaos suites' client that writes on the primary directly (decision 0026).
//! Unpaced, it wrote ten times as much as the four clients through capgate together (no proxy,
//! no admission in its path) and, on a 2-core machine, more than the shipper applies between
//! faults: the backlog only grew, and the drain check measured the machine's load.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

/// The direct client's pace, in operations a second (`CHAOS_DIRECT_RATE`, default 50; 0: as
/// fast as the primary answers).
pub fn direct_rate() -> u32 {
    std::env::var("CHAOS_DIRECT_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(50)
}

/// Waits between one client's operations: [`direct_rate`] for the direct client, not at all
/// for the others.
pub struct Pace(Option<Interval>);

impl Pace {
    pub fn new(direct: bool) -> Pace {
        let rate = if direct { direct_rate() } else { 0 };
        Pace((rate > 0).then(|| {
            let mut every = tokio::time::interval(Duration::from_secs(1) / rate);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            every
        }))
    }

    /// Returns when the next operation may start.
    pub async fn wait(&mut self) {
        if let Some(every) = self.0.as_mut() {
            every.tick().await;
        }
    }
}

//! The last minutes of each replica's figures, one sample a second: what the dashboard's
//! chart draws ("lag over time") and what the drain rate is computed from. Kept in memory
//! only (ten minutes, a few tens of kilobytes per replica); a restart starts it afresh.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::AdminState;

/// Samples kept per replica (one a second: ten minutes).
pub const KEEP: usize = 600;

/// Seconds of history the drain rate is averaged over.
const DRAIN_WINDOW: f64 = 10.0;

/// One replica at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: f64,
    pub state: &'static str,
    pub rtt_ms: Option<f64>,
    pub lag_seconds: Option<f64>,
    pub pending_rows: Option<u64>,
    /// Rows the shipper has applied since start (a counter; None without a shipper).
    pub applied_rows: Option<u64>,
}

/// The `/history` document: `{interval_seconds, replicas: {name: [Sample…]}}`.
#[derive(Debug, Serialize)]
pub struct HistoryDoc {
    pub interval_seconds: u32,
    pub replicas: HashMap<String, Vec<Sample>>,
}

/// Every replica's recent samples.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<HashMap<String, VecDeque<Sample>>>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl History {
    /// Take one sample of every replica of `state`.
    pub fn sample(&self, state: &AdminState) {
        let t = now();
        let mut all = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        for source in &state.replicas {
            let s = source.health.status();
            let ship = source.shipper.as_ref().map(super::status::shipping);
            let lag = ship.as_ref().and_then(|x| x.lag.as_ref());
            let sample = Sample {
                t,
                state: s.state.as_str(),
                rtt_ms: s.smoothed_rtt.map(|d| d.as_secs_f64() * 1000.0),
                lag_seconds: lag.map(|l| l.seconds()),
                pending_rows: lag.map(|l| l.pending_rows),
                applied_rows: source.shipper.as_ref().map(|v| v.stats.statements.load(Ordering::Relaxed)),
            };
            let list = all.entry(source.health.replica().to_owned()).or_default();
            if list.len() == KEEP {
                list.pop_front();
            }
            list.push_back(sample);
        }
    }

    /// Rows applied per second to `replica` over the last ten seconds; None until there are
    /// ten seconds of samples (or without a shipper).
    pub fn drain_rate(&self, replica: &str) -> Option<f64> {
        let all = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let list = all.get(replica)?;
        let last = list.back()?;
        let first = list.iter().rev().find(|s| last.t - s.t >= DRAIN_WINDOW)?;
        let applied = last.applied_rows?.saturating_sub(first.applied_rows?);
        Some(applied as f64 / (last.t - first.t))
    }

    /// Everything kept, oldest first.
    pub fn doc(&self) -> HistoryDoc {
        let all = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        HistoryDoc { interval_seconds: 1, replicas: all.iter().map(|(k, v)| (k.clone(), v.iter().cloned().collect())).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, applied: u64) -> Sample {
        Sample { t, state: "healthy", rtt_ms: None, lag_seconds: Some(0.0), pending_rows: Some(0), applied_rows: Some(applied) }
    }

    #[test]
    fn drain_rate_needs_ten_seconds_and_averages_over_them() {
        let h = History::default();
        {
            let mut all = h.samples.lock().unwrap();
            let list = all.entry("b".into()).or_default();
            for i in 0..5 {
                list.push_back(sample(100.0 + i as f64, 1000 * i));
            }
        }
        assert_eq!(h.drain_rate("b"), None, "5 s of history is not enough");
        {
            let mut all = h.samples.lock().unwrap();
            let list = all.get_mut("b").unwrap();
            for i in 5..=20 {
                list.push_back(sample(100.0 + i as f64, 1000 * i));
            }
        }
        assert_eq!(h.drain_rate("b"), Some(1000.0));
        assert_eq!(h.drain_rate("c"), None);
    }
}

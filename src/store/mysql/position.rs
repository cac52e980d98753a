//! How far a MySQL replica has applied an origin's `capgate.changes` (decision 0021): every
//! `seq` up to `high` except the `holes`. No I/O here: the shipper reads a batch, and
//! [`Position::after`] says what the replica has applied once that batch commits.
//!
//! Why holes: `seq` is an AUTO_INCREMENT taken when the capture trigger inserts, not when the
//! writer commits. A batch read at one moment can see seq 11 committed while seq 10 belongs
//! to a transaction still open (or one that rolled back, or a statement that has taken the
//! number and not yet inserted the row). Such a `seq` is a hole: the shipper looks for it
//! again in every batch until it shows up (then it is applied) or is proven never to show up
//! ([`Position::prune`]): every transaction that could hold it has ended.

use std::collections::BTreeMap;

/// Seconds a hole must be old before it may be pruned: `information_schema.INNODB_TRX` is a
/// cache refreshed at most every 0.1 s, and `trx_started` has whole seconds. After this, a
/// listing of open transactions is certain to have been taken after the hole was seen.
pub const HOLE_SETTLE_SECS: f64 = 1.5;

/// Past this many holes the shipper warns: a position this large says something is wrong
/// (an `auto_increment_increment` above 1 on the primary makes every other number a hole);
/// see decision 0021.
pub const MAX_HOLES: usize = 100_000;

/// Why a stored position cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("the stored holes are not a JSON list of [seq, seen] pairs: {0}")]
    Holes(String),
}

/// What a replica has applied of one origin: `seq <= high`, minus `holes`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Position {
    pub high: u64,
    /// seq → when it was first seen missing (the primary's clock, Unix seconds).
    pub holes: BTreeMap<u64, f64>,
}

impl Position {
    /// The position stored as `high` and the holes' JSON text.
    pub fn parse(high: u64, holes: &str) -> Result<Position, PositionError> {
        let pairs: Vec<(u64, f64)> = serde_json::from_str(holes).map_err(|e| PositionError::Holes(e.to_string()))?;
        Ok(Position { high, holes: pairs.into_iter().collect() })
    }

    /// The holes as stored: `[[seq, seen], …]`.
    pub fn holes_json(&self) -> String {
        let pairs: Vec<(u64, f64)> = self.holes.iter().map(|(s, t)| (*s, *t)).collect();
        serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
    }

    /// Whether `seq` is already applied.
    pub fn applied(&self, seq: u64) -> bool {
        seq <= self.high && !self.holes.contains_key(&seq)
    }

    /// The SQL condition on `capgate.changes` that selects what is not applied yet.
    pub fn pending_sql(&self) -> String {
        if self.holes.is_empty() {
            return format!("seq > {}", self.high);
        }
        let list: Vec<String> = self.holes.keys().map(u64::to_string).collect();
        format!("(seq > {} OR seq IN ({}))", self.high, list.join(","))
    }

    /// The position once a batch that read `seqs` (ascending, every one of them not applied
    /// yet) at primary time `now` is applied: `high` moves to the largest seq read, and every
    /// number between the old `high` and it that was not read becomes a hole seen at `now`.
    pub fn after(&self, seqs: &[u64], now: f64) -> Position {
        let mut next = self.clone();
        for s in seqs {
            next.holes.remove(s);
        }
        let Some(&top) = seqs.last() else { return next };
        if top > self.high {
            let read: std::collections::BTreeSet<u64> = seqs.iter().copied().filter(|s| *s > self.high).collect();
            for s in (self.high + 1)..top {
                if !read.contains(&s) {
                    next.holes.insert(s, now);
                }
            }
            next.high = top;
        }
        next
    }

    /// The holes that may have been given up by every transaction that could fill them: seen
    /// at least [`HOLE_SETTLE_SECS`] before `now`, and older than every transaction still open
    /// on the primary (`oldest`: the earliest `trx_started` among them, None when none is
    /// open). The transaction that took a hole's number was open before the hole was seen; if
    /// it is not open any more, it has committed or rolled back — so a candidate is settled
    /// only once a read *after* that listing still does not find its row
    /// ([`super::ship::settled_holes`]): the transaction may have committed after the batch
    /// that last missed it was read.
    pub fn settle_candidates(&self, now: f64, oldest: Option<f64>) -> Vec<u64> {
        self.holes
            .iter()
            .filter(|(_, seen)| *seen + HOLE_SETTLE_SECS <= now && oldest.is_none_or(|o| o > **seen))
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Drops `seqs` from the holes (numbers proven never to show up). Returns how many were
    /// holes.
    pub fn drop_holes(&mut self, seqs: &[u64]) -> usize {
        seqs.iter().filter(|s| self.holes.remove(s).is_some()).count()
    }

    /// The lowest seq not applied: changes below it can be deleted on the primary.
    pub fn floor(&self) -> u64 {
        self.holes.keys().next().copied().unwrap_or(self.high + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_skipped_by_a_batch_is_a_hole_until_it_is_read() {
        let p = Position::default().after(&[1, 2, 4, 7], 100.0);
        assert_eq!(p.high, 7);
        assert_eq!(p.holes.keys().copied().collect::<Vec<_>>(), [3, 5, 6]);
        assert!(p.applied(4) && !p.applied(5) && !p.applied(8));
        assert_eq!(p.pending_sql(), "(seq > 7 OR seq IN (3,5,6))");
        // 5 commits later: read with the next batch, and the holes keep their first sighting.
        let q = p.after(&[5, 9], 101.0);
        assert_eq!(q.high, 9);
        assert_eq!(q.holes, BTreeMap::from([(3, 100.0), (6, 100.0), (8, 101.0)]));
        assert_eq!(q.floor(), 3);
        // A batch of holes alone does not move high.
        let r = q.after(&[3], 102.0);
        assert_eq!((r.high, r.holes.len()), (9, 2));
    }

    #[test]
    fn holes_are_candidates_only_once_every_older_transaction_has_ended() {
        let mut p = Position::default().after(&[1, 3], 100.0);
        assert!(p.settle_candidates(100.5, None).is_empty(), "too recent: the listing of open transactions may predate it");
        assert!(p.settle_candidates(102.0, Some(99.0)).is_empty(), "a transaction open since before the hole may still fill it");
        assert_eq!(p.settle_candidates(102.0, Some(100.5)), [2], "every open transaction started after the hole was seen");
        assert_eq!(p.drop_holes(&[2, 9]), 1);
        assert_eq!(p.floor(), 4);
    }

    #[test]
    fn positions_round_trip_through_their_stored_form() {
        let p = Position::default().after(&[2, 5], 1.5);
        assert_eq!(Position::parse(p.high, &p.holes_json()), Ok(p));
        assert!(Position::parse(0, "nope").is_err());
    }
}

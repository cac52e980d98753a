//! Applying one snapshot range (see [`super::range`]) to the replica, in parts (decision
//! 0022), pipelined: the next page is read from the primary while the replica applies the
//! current one, and the page that ends a part travels in the same round trip as the advance
//! of the replica's position and the COMMIT.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use futures_util::future::OptionFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::range::{Opened, Page, Position, Range};
use super::session::{Fail, Run};
use super::tables::Filters;
use crate::replicate::apply::{self, explain, ApplyError, Conflict};

/// The replica session's prepared statements.
pub(super) struct Stmts {
    pub(super) apply: Statement,
    pub(super) advance: Statement,
}

/// How one range ended.
pub(super) enum Ranged {
    /// Applied and committed: the replica is at `snapshot`.
    Applied { snapshot: String },
    /// Nothing to apply; `snapshot` is the primary's now.
    Empty { snapshot: String },
    /// A table halted (conflict under `halt`, or its apply failed): the part under way was
    /// rolled back (the parts before it stay committed).
    Halted { table: String, error: String, conflict: Box<Conflict> },
    /// The range's snapshot shows captured tables the shipper has not listed yet: nothing was
    /// read; list them (copy or adopt them) before the next range.
    Unlisted { tables: Vec<String> },
}

/// What one part of a range applied: counted once the replica commits it.
#[derive(Default)]
struct Part {
    pages: u64,
    changes: u64,
    by_table: BTreeMap<String, u64>,
    conflicts: Vec<Conflict>,
}

impl Run {
    /// The `on_conflict` JSON for the tables of `page`.
    fn on_conflict(&self, page: &Page) -> String {
        let tables = page.by_table.keys().map(|t| (t.as_str(), (self.config.on_conflict)(t).as_str()));
        apply::on_conflict_json(tables, crate::policy::DEFAULT_ON_CONFLICT.as_str())
    }

    /// Reads and applies one range from `at` (a new one, or the rest of one committed in part),
    /// one replica transaction per part: the next page is read from the primary while the
    /// replica applies the current one, and the page that ends a part goes in the same round
    /// trip as the advance and the COMMIT. `at` follows every part the replica commits, so it
    /// is right whatever happens next; after an error whose outcome is unknown the caller
    /// reads it again from the replica.
    pub(super) async fn range(
        &self,
        primary: &mut Client,
        replica: &Client,
        stmts: &Stmts,
        at: &mut Position,
        filters: &Filters,
        listed: &[String],
    ) -> Result<Ranged, Fail> {
        let cfg = &self.config;
        let primary_fail = |e: String| Fail::Primary(e);
        let started = std::time::Instant::now();
        let open = Range::open(primary, at, filters, listed, cfg.part_changes);
        let mut range = match self.timed("opening a range on the primary", open).await.map_err(primary_fail)? {
            Opened::Range(r) => r,
            Opened::Empty { snapshot } => return Ok(Ranged::Empty { snapshot }),
            Opened::Unlisted(tables) => return Ok(Ranged::Unlisted { tables }),
        };
        let opened = started.elapsed();
        let snapshot = range.snapshot.clone();
        let (rows, bytes) = (cfg.page_rows, cfg.page_bytes);
        let Some(mut cur) = self.timed("reading changes", range.next_page(rows, bytes)).await.map_err(primary_fail)? else {
            // Nothing passed the filters, or nothing is left after the parts committed.
            self.timed("ending the range", range.close()).await.map_err(primary_fail)?;
            self.advance_only(replica, stmts, at, &snapshot).await.map_err(Fail::Replica)?;
            *at = Position { snapshot: Some(snapshot.clone()), target: None, seq: None };
            return Ok(Ranged::Applied { snapshot });
        };
        let mut next = self.timed("reading changes", range.next_page(rows, bytes)).await.map_err(primary_fail)?;
        let first_pages = started.elapsed();
        let (mut pages, mut changes) = (0usize, 0usize);
        let mut part = Part::default();
        let origin = cfg.origin.as_str();
        loop {
            let on_conflict = self.on_conflict(&cur);
            let last = next.is_none();
            // After this page: the range's last commit (Some(None)), the commit of a part ending
            // at a seq (Some(Some(seq))), or no commit (None).
            let commit: Option<Option<i64>> = match (last, cur.ends_part) {
                (true, _) => Some(None),
                (false, true) => Some(Some(cur.last_seq)),
                (false, false) => None,
            };
            let to_seq = commit.flatten();
            let apply_params: [&(dyn ToSql + Sync); 3] = [&origin, &cur.json, &on_conflict];
            let advance_params: [&(dyn ToSql + Sync); 5] = [&origin, &at.snapshot, &at.seq, &snapshot, &to_seq];
            let begin = OptionFuture::from((part.pages == 0).then(|| replica.batch_execute("BEGIN")));
            let apply = replica.query_one(&stmts.apply, &apply_params);
            let advance = OptionFuture::from(commit.map(|_| replica.execute(&stmts.advance, &advance_params)));
            let end = OptionFuture::from(commit.map(|_| replica.batch_execute("COMMIT")));
            let fetch = OptionFuture::from((!last).then(|| range.next_page(rows, bytes)));
            let joined = async { tokio::join!(begin, apply, advance, end, fetch) };
            let (began, applied, advanced, ended, fetched) = self.within("applying a page", joined).await.map_err(Fail::Replica)?;
            part.pages += 1;
            part.changes += cur.changes as u64;
            pages += 1;
            changes += cur.changes;
            for (t, n) in &cur.by_table {
                *part.by_table.entry(t.clone()).or_insert(0) += n;
            }
            let outcome = began.unwrap_or(Ok(())).map_err(ApplyError::Replica).and_then(|_| applied.map_err(apply::conflict_error));
            match outcome {
                Ok(row) => {
                    let text: String = row.try_get(0).map_err(|e| Fail::Replica(e.to_string()))?;
                    let mut found: Vec<Conflict> =
                        serde_json::from_str(&text).map_err(|e| Fail::Replica(format!("reading the replica's conflicts: {e}")))?;
                    part.conflicts.append(&mut found);
                }
                Err(ApplyError::Conflict { message, conflict, halted: true }) => {
                    let _ = replica.batch_execute("ROLLBACK").await;
                    let _ = range.close().await;
                    let error = match &conflict.detail {
                        Some(d) if !message.contains(d.as_str()) => format!("{message}: {d}"),
                        _ => message,
                    };
                    return Ok(Ranged::Halted { table: conflict.tbl.clone(), error, conflict });
                }
                Err(e) => {
                    let _ = replica.batch_execute("ROLLBACK").await;
                    return Err(Fail::Replica(format!("applying a range: {e}")));
                }
            }
            if commit.is_some() {
                if let Err(e) = advanced.unwrap_or(Ok(0)).and(ended.unwrap_or(Ok(()))) {
                    // The advance or the COMMIT failed (a stale shipper, a broken link).
                    let _ = replica.batch_execute("ROLLBACK").await;
                    return Err(Fail::Replica(format!("committing a range: {}", explain(&e))));
                }
                *at = match to_seq {
                    None => Position { snapshot: Some(snapshot.clone()), target: None, seq: None },
                    Some(seq) => Position { snapshot: at.snapshot.clone(), target: Some(snapshot.clone()), seq: Some(seq) },
                };
                self.committed(std::mem::take(&mut part));
            }
            match fetched {
                None => break,
                Some(Ok(page)) => {
                    cur = next.take().unwrap_or_default();
                    next = page;
                }
                Some(Err(e)) => return Err(Fail::Primary(format!("reading changes: {}", explain(&e)))),
            }
        }
        self.timed("ending the range", range.close()).await.map_err(primary_fail)?;
        self.stats.ranges.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(replica = %cfg.replica_name, changes, pages, opened_ms = opened.as_millis() as u64,
            first_pages_ms = first_pages.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64, "shipper: range applied");
        Ok(Ranged::Applied { snapshot })
    }

    /// Counts a part the replica committed, and records its conflicts.
    fn committed(&self, part: Part) {
        self.stats.parts.fetch_add(1, Ordering::Relaxed);
        self.stats.batches.fetch_add(part.pages, Ordering::Relaxed);
        self.stats.changes.fetch_add(part.changes, Ordering::Relaxed);
        {
            let mut counts = self.stats.changes_by_table.lock().unwrap_or_else(|p| p.into_inner());
            for (t, n) in part.by_table {
                *counts.entry(t).or_insert(0) += n;
            }
        }
        for c in &part.conflicts {
            self.conflict(c);
        }
    }

    async fn within<T>(&self, what: &str, fut: impl std::future::Future<Output = T>) -> Result<T, String> {
        tokio::time::timeout(self.config.deadline, fut)
            .await
            .map_err(|_| format!("{what} did not finish within {:?}", self.config.deadline))
    }

    /// A range with nothing (left) to apply: only the position moves, to `to` (one round trip).
    pub(super) async fn advance_only(&self, replica: &Client, stmts: &Stmts, at: &Position, to: &str) -> Result<(), String> {
        let origin = self.config.origin.as_str();
        let no_seq: Option<i64> = None;
        let params: [&(dyn ToSql + Sync); 5] = [&origin, &at.snapshot, &at.seq, &to, &no_seq];
        let joined = async {
            tokio::join!(replica.batch_execute("BEGIN"), replica.execute(&stmts.advance, &params), replica.batch_execute("COMMIT"))
        };
        let (b, a, c) = self.within("recording an idle range", joined).await?;
        match b.and(a.map(|_| ())).and(c) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = replica.batch_execute("ROLLBACK").await;
                Err(format!("recording an idle range: {}", explain(&e)))
            }
        }
    }
}

//! Applying one snapshot range (see [`super::range`]) to the replica in one transaction,
//! pipelined: the next page is read from the primary while the replica applies the current
//! one, and the last page travels in the same round trip as the advance of the applied
//! snapshot and the COMMIT.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tokio_postgres::{Client, Statement};

use super::range::{Page, Range};
use super::session::{Fail, Run};
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
    /// A table halted (conflict under `halt`, or its apply failed): nothing was committed.
    Halted { table: String, error: String, conflict: Box<Conflict> },
}

impl Run {
    /// The `on_conflict` JSON for the tables of `page`.
    fn on_conflict(&self, page: &Page) -> String {
        let tables = page.by_table.keys().map(|t| (t.as_str(), (self.config.on_conflict)(t).as_str()));
        apply::on_conflict_json(tables, crate::policy::DEFAULT_ON_CONFLICT.as_str())
    }

    /// Reads and applies one range in one replica transaction: the next page is read from the
    /// primary while the replica applies the current one, and the last page goes in the same
    /// round trip as the advance and the COMMIT.
    pub(super) async fn range(
        &self,
        primary: &mut Client,
        replica: &Client,
        stmts: &Stmts,
        from: Option<&str>,
        skip: &[String],
        gates: &str,
    ) -> Result<Ranged, Fail> {
        let cfg = &self.config;
        let primary_fail = |e: String| Fail::Primary(e);
        let range = self.timed("opening a range on the primary", Range::open(primary, from, skip, gates)).await.map_err(primary_fail)?;
        let snapshot = range.snapshot.clone();
        // Taken (and ended durably) once its last page is read, before the replica commits.
        let mut range = Some(range);
        let (rows, bytes) = (cfg.page_rows, cfg.page_bytes);
        let Some(open) = range.as_mut() else { return Err(Fail::Primary("the range is closed".into())) };
        let Some(mut cur) = self.timed("reading changes", open.next_page(rows, bytes)).await.map_err(primary_fail)? else {
            if let Some(r) = range.take() {
                self.timed("ending the range", r.close()).await.map_err(primary_fail)?;
            }
            return Ok(Ranged::Empty { snapshot });
        };
        let mut next = self.timed("reading changes", open.next_page(rows, bytes)).await.map_err(primary_fail)?;
        let mut first = true;
        let mut pages = 0u64;
        let mut changes = 0u64;
        let mut by_table: BTreeMap<String, u64> = BTreeMap::new();
        let mut conflicts: Vec<Conflict> = Vec::new();
        let origin = cfg.origin.as_str();
        loop {
            let on_conflict = self.on_conflict(&cur);
            let begin = async {
                if first {
                    replica.batch_execute("BEGIN").await
                } else {
                    Ok(())
                }
            };
            let apply_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&origin, &cur.json, &on_conflict];
            let advance_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&origin, &from, &snapshot];
            let last = next.is_none();
            if last {
                if let Some(r) = range.take() {
                    self.timed("making the range durable on the primary", r.close_durable()).await.map_err(primary_fail)?;
                }
            }
            let apply = replica.query_one(&stmts.apply, &apply_params);
            let (began, applied, fetched) = if last {
                let advance = replica.execute(&stmts.advance, &advance_params);
                let commit = replica.batch_execute("COMMIT");
                let joined = async { tokio::join!(begin, apply, advance, commit) };
                let (b, a, adv, c) = self.within("applying a range", joined).await.map_err(Fail::Replica)?;
                let done = adv.and(c).map(|_| None);
                (b, a, done)
            } else {
                let Some(open) = range.as_mut() else { return Err(Fail::Primary("the range is closed".into())) };
                let joined = async { tokio::join!(begin, apply, open.next_page(rows, bytes)) };
                let (b, a, f) = self.within("applying a page", joined).await.map_err(Fail::Replica)?;
                (b, a, f)
            };
            first = false;
            pages += 1;
            changes += cur.changes as u64;
            for (t, n) in &cur.by_table {
                *by_table.entry(t.clone()).or_insert(0) += n;
            }
            let outcome = began.map_err(ApplyError::Replica).and_then(|_| applied.map_err(apply::conflict_error));
            match outcome {
                Ok(row) => {
                    let text: String = row.try_get(0).map_err(|e| Fail::Replica(e.to_string()))?;
                    let mut found: Vec<Conflict> =
                        serde_json::from_str(&text).map_err(|e| Fail::Replica(format!("reading the replica's conflicts: {e}")))?;
                    conflicts.append(&mut found);
                }
                Err(ApplyError::Conflict { message, conflict, halted: true }) => {
                    let _ = replica.batch_execute("ROLLBACK").await;
                    if let Some(r) = range.take() {
                        let _ = r.close().await;
                    }
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
            match fetched {
                Ok(Some(page)) => {
                    cur = next.take().unwrap_or_default();
                    next = Some(page);
                }
                Ok(None) if !last => {
                    cur = next.take().unwrap_or_default();
                }
                Ok(None) => break,
                Err(e) if last => {
                    // The advance or the COMMIT failed (a stale shipper, a broken link).
                    let _ = replica.batch_execute("ROLLBACK").await;
                    return Err(Fail::Replica(format!("committing a range: {}", explain(&e))));
                }
                Err(e) => return Err(Fail::Primary(format!("reading changes: {}", explain(&e)))),
            }
        }
        if let Some(r) = range.take() {
            self.timed("ending the range", r.close()).await.map_err(primary_fail)?;
        }
        self.stats.ranges.fetch_add(1, Ordering::Relaxed);
        self.stats.batches.fetch_add(pages, Ordering::Relaxed);
        self.stats.changes.fetch_add(changes, Ordering::Relaxed);
        {
            let mut counts = self.stats.changes_by_table.lock().unwrap_or_else(|p| p.into_inner());
            for (t, n) in by_table {
                *counts.entry(t).or_insert(0) += n;
            }
        }
        for c in &conflicts {
            self.conflict(c);
        }
        Ok(Ranged::Applied { snapshot })
    }

    async fn within<T>(&self, what: &str, fut: impl std::future::Future<Output = T>) -> Result<T, String> {
        tokio::time::timeout(self.config.deadline, fut)
            .await
            .map_err(|_| format!("{what} did not finish within {:?}", self.config.deadline))
    }

    /// An empty range: only the applied snapshot moves (one round trip).
    pub(super) async fn advance_only(&self, replica: &Client, stmts: &Stmts, from: Option<&str>, to: &str) -> Result<(), String> {
        let origin = self.config.origin.as_str();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&origin, &from, &to];
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

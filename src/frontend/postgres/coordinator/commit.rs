//! Driving a [`SyncCommit`] on the PostgreSQL wire: the commit point the client sent (or the
//! one capgate owes an autocommit statement it wrapped), capgate's own statements on the
//! primary, the replicas' prepares in parallel, and what the client sees when the commit is
//! refused (decision 0009).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::super::statements::raise_statement;
use super::super::{SessionError, Shared};
use super::wire::{error_text, Rows, Wire};
use crate::classify::TableName;
use crate::policy::Policy;
use crate::protocol::postgres::message::{ErrorMessage, Severity};
use crate::replicate::coordinator::{strictest_on_partition, Action, Event, PrepareFailure, ReplicaView, SyncCommit};
use crate::replicate::Refusal;
use crate::store::postgres::twophase;

/// How long a committed or rolled-back branch's COMMIT / ROLLBACK PREPARED is retried before
/// it is left to recovery.
const FINISH_RETRY: Duration = Duration::from_secs(30);

/// Where the transaction ends, as the client asked (or capgate must).
pub enum CommitPoint {
    /// A COMMIT (or END) Query inside a transaction block.
    Query(BytesMut),
    /// The Bind of a prepared COMMIT inside a transaction block (extended protocol).
    Bind(BytesMut),
    /// The Sync that ends an implicit extended-protocol transaction.
    Sync(BytesMut),
    /// The end of an autocommit Query capgate wrapped in its own BEGIN: capgate's own COMMIT,
    /// then an idle ReadyForQuery for the client.
    Wrapped,
}

impl CommitPoint {
    /// Whether capgate's own statements must be extended-protocol ones (inside the client's
    /// group, before its Sync).
    pub(super) fn extended(&self) -> bool {
        matches!(self, CommitPoint::Bind(_) | CommitPoint::Sync(_))
    }
}

/// The largest quorum among `tables` under `policy`, counted against `replicas` (a table
/// without one requires every replica).
pub fn strictest_quorum(policy: &Policy, tables: &[String], replicas: usize) -> usize {
    tables
        .iter()
        .map(|t| TableName::parse(t).map_or(replicas, |name| policy.decide_table(&name).mode.quorum_of(replicas)))
        .max()
        .unwrap_or(replicas)
}

/// Each replica's name, whether a write may go to it now, and its state for messages.
pub fn replica_views(shared: &Shared) -> Vec<ReplicaView> {
    shared
        .replication
        .sites
        .iter()
        .map(|site| {
            let s = site.health().status();
            let state = match &s.last_error {
                Some(e) => format!("{} ({e})", s.state),
                None => s.state.to_string(),
            };
            ReplicaView { name: site.name().to_owned(), available: s.state.is_available(), state }
        })
        .collect()
}

/// Run a sync commit at `point`. The primary's transaction holds sync changes (the capture
/// trigger said so). On return the client has its answer to the commit point, or, for a
/// COMMIT whose outcome capgate could not observe, the rest of the session carries it.
pub async fn run<CR, CW, SR, SW>(
    shared: &Shared,
    policy: &Policy,
    wire: &mut Wire<'_, CR, CW, SR, SW>,
    point: CommitPoint,
) -> Result<(), SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let replication = shared.replication.clone();
    let (mut commit, first) = SyncCommit::start(replication.next_gid(), policy.streams_sync(replication.sites.len()));
    // Each PREPARE sent, until its Finish: whether it prepared (a quorum commit goes on
    // without the slower ones; their Finish waits for them).
    let mut branches: HashMap<usize, JoinHandle<bool>> = HashMap::new();
    let mut actions: VecDeque<Action> = VecDeque::from([first]);
    let mut point = Some(point);
    let extended = point.as_ref().is_some_and(CommitPoint::extended);
    // An autocommit Query's last CommandComplete (a wrapped COPY's `COPY n` included) waits
    // for the commit's outcome, as PostgreSQL sends it only once the statement committed.
    let hold = matches!(point, Some(CommitPoint::Wrapped));
    while let Some(action) = actions.pop_front() {
        let event = match action {
            Action::ReadChanges { gid, stream } => {
                let sql = format!(
                    "SELECT tables, changes FROM capgate.sync_prepare({}, {}, {stream})",
                    twophase::quote(&gid),
                    twophase::quote(&replication.site)
                );
                let rows = if extended { wire.own_extended(&sql).await? } else { wire.own_query(&sql).await? };
                Some(changes_event(rows, policy, shared))
            }
            Action::CommitPlain | Action::CommitPrimary => {
                let committed = primary_commit(wire, point.take()).await?;
                committed.map(|committed| Event::PrimaryDone { committed })
            }
            Action::WaitAvailable { timeout } => {
                if !hold {
                    wire.flush_client().await?;
                }
                let deadline = tokio::time::Instant::now() + timeout;
                for site in replication.sites.iter() {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let _ = site.health().wait_available(left).await;
                }
                Some(Event::Availability(replica_views(shared)))
            }
            Action::Prepare { replicas, gid, changes, record } => {
                if !hold {
                    wire.flush_client().await?;
                }
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                for &i in &replicas {
                    let (replication, gid, changes, tx) = (replication.clone(), gid.clone(), changes.clone(), tx.clone());
                    let branch = tokio::spawn(async move {
                        let result = match replication.sites.iter().nth(i) {
                            Some(site) => {
                                let lock_wait = match replication.takes_writes.get(i) {
                                    Some(true) => twophase::yield_wait(&replication.site, site.name(), replication.deadline),
                                    _ => None,
                                };
                                let to = twophase::Branch { origin: &replication.site, gid: &gid, record, lock_wait };
                                twophase::prepare(
                                    site,
                                    to,
                                    &changes,
                                    twophase::prepare_deadline(replication.deadline, &changes, replication.prepare_limit),
                                )
                                .await
                            }
                            None => Err(PrepareFailure::Unavailable("no such replica".into())),
                        };
                        let prepared = result.is_ok();
                        let _ = tx.send((i, result));
                        prepared
                    });
                    branches.insert(i, branch);
                }
                drop(tx);
                // Answers as they come, until the machine decides (the quorum prepared, or
                // can no longer): the slower branches go on, and their Finish waits for them.
                let mut unanswered = replicas.clone();
                let mut decided = false;
                while let Some((replica, result)) = rx.recv().await {
                    unanswered.retain(|&i| i != replica);
                    let next = commit.on(Event::Prepared { replica, result });
                    if !next.is_empty() {
                        actions.extend(next);
                        decided = true;
                        break;
                    }
                }
                // Every sender gone without a decision: a PREPARE task ended without an
                // answer (it panicked). It counts as unavailable, so the commit is still
                // decided and the client answered, never left waiting inside capgate's BEGIN.
                for replica in unanswered {
                    if decided {
                        break;
                    }
                    let failed = Err(PrepareFailure::Unavailable("capgate's PREPARE task ended without an answer".into()));
                    let next = commit.on(Event::Prepared { replica, result: failed });
                    decided = !next.is_empty();
                    actions.extend(next);
                }
                None
            }
            Action::Streamed { replicas } => {
                for i in replicas {
                    if let Some(site) = replication.sites.iter().nth(i) {
                        metrics::counter!("capgate_sync_streamed_total", "replica" => site.name().to_owned()).increment(1);
                        debug!(replica = site.name(), gid = %commit.gid(), "outside the quorum: the change stream brings it this commit");
                    }
                }
                None
            }
            Action::Refuse(refusal) => {
                debug!(code = refusal.code, gid = %commit.gid(), "sync commit refused: {}", refusal.message);
                refuse(wire, point.take(), &refusal).await?;
                None
            }
            Action::Conflict { replica, detail } => {
                metrics::counter!("capgate_sync_conflicts_total", "replica" => replica.clone()).increment(1);
                warn!(%replica, gid = %commit.gid(), "sync commit refused: the replica's rows differ: {detail}");
                None
            }
            Action::Finish { commit: ok, replicas, gid } => {
                if ok {
                    metrics::counter!("capgate_sync_commits_total").increment(1);
                }
                let sites: Vec<_> = replication.sites.iter().collect();
                for i in replicas {
                    let Some(site) = sites.get(i) else { continue };
                    let (pool, gid, branch) = (site.pool().clone(), gid.clone(), branches.remove(&i));
                    tokio::spawn(async move {
                        // A branch that did not prepare has nothing to finish (one capgate gave
                        // up on is watched and rolled back by its prepare).
                        let prepared = match branch {
                            Some(branch) => branch.await.unwrap_or(false),
                            None => true,
                        };
                        if prepared {
                            twophase::finish(pool, gid, ok, FINISH_RETRY).await;
                        }
                    });
                }
                None
            }
        };
        if let Some(event) = event {
            actions.extend(commit.on(event));
        }
    }
    Ok(())
}

/// The event for the rows of `capgate.sync_prepare`.
fn changes_event(rows: Result<Rows, BytesMut>, policy: &Policy, shared: &Shared) -> Event {
    let rows = match rows {
        Ok(rows) => rows,
        Err(frame) => return Event::ChangesFailed(error_text(&frame)),
    };
    let row = rows.into_iter().next().unwrap_or_default();
    let tables: Vec<String> = row.first().cloned().flatten().map(|t| parse_text_array(&t)).unwrap_or_default();
    let changes: Option<Arc<str>> = row.get(1).cloned().flatten().map(Arc::from);
    let on_partition = strictest_on_partition(policy, &tables);
    let replicas = replica_views(shared);
    let quorum = Some(strictest_quorum(policy, &tables, replicas.len()));
    Event::Changes { tables, changes, on_partition, quorum, replicas }
}

/// `{a,"b c"}` (a text[] in text form) as its elements.
pub(super) fn parse_text_array(text: &str) -> Vec<String> {
    let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !inner.is_empty() {
        out.push(cur);
    }
    out
}

/// Let the primary commit at `point`. Returns whether it committed, or None when the outcome
/// could not be observed here (the commit's Execute never came before a Sync).
async fn primary_commit<CR, CW, SR, SW>(
    wire: &mut Wire<'_, CR, CW, SR, SW>,
    point: Option<CommitPoint>,
) -> Result<Option<bool>, SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    match point {
        Some(CommitPoint::Query(frame)) => {
            wire.forward(&frame).await?;
            let outcome = wire.relay_until_ready().await?;
            wire.ready(outcome.status);
            Ok(Some(!outcome.error && outcome.tag.is_some_and(|t| t.starts_with("COMMIT"))))
        }
        Some(CommitPoint::Sync(frame)) => {
            wire.forward(&frame).await?;
            let outcome = wire.relay_until_ready().await?;
            wire.ready(outcome.status);
            Ok(Some(!outcome.error))
        }
        Some(CommitPoint::Bind(frame)) => {
            wire.forward(&frame).await?;
            // The client's Execute of its COMMIT follows (maybe after a Describe).
            loop {
                let Some(next) = wire.client_frame().await? else { return Err(SessionError::Closed) };
                match next[0] {
                    b'E' => {
                        wire.forward(&next).await?;
                        wire.send_server(&super::wire::FLUSH).await?;
                        let (tag, frame) = wire.relay_until_complete().await?;
                        let committed = tag == b'C' && frame.get(5..11) == Some(b"COMMIT");
                        return Ok(Some(committed));
                    }
                    b'S' | b'X' => {
                        // No Execute: the transaction stays open with its decision record
                        // uncommitted; recovery resolves the branches when it ends.
                        wire.forward(&next).await?;
                        warn!("a prepared COMMIT was bound but not executed; recovery will resolve its replicas");
                        return Ok(None);
                    }
                    _ => wire.forward(&next).await?,
                }
            }
        }
        Some(CommitPoint::Wrapped) => {
            let done = wire.own_query("COMMIT").await?;
            if let Err(frame) = &done {
                wire.out.extend_from_slice(frame);
            }
            wire.ready(b'I');
            Ok(Some(done.is_ok()))
        }
        None => Ok(Some(false)),
    }
}

/// Refuse the commit at `point`: nothing commits, the client gets `refusal` as an error, and
/// its session ends up idle, as after a COMMIT that failed in PostgreSQL.
pub(super) async fn refuse<CR, CW, SR, SW>(
    wire: &mut Wire<'_, CR, CW, SR, SW>,
    point: Option<CommitPoint>,
    refusal: &Refusal,
) -> Result<(), SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let error = ErrorMessage::new(Severity::Error, refusal.code, refusal.message.clone()).with_hint(refusal.hint.clone());
    match point {
        Some(CommitPoint::Query(frame)) => {
            // The client's COMMIT is answered here, never sent.
            super::super::relay::client_frame(wire.state, frame[0]);
            let _ = wire.own_query("ROLLBACK").await?;
            error.encode(&mut wire.out);
            wire.ready(b'I');
        }
        Some(CommitPoint::Wrapped) => {
            let _ = wire.own_query("ROLLBACK").await?;
            // The error replaces the last statement's CommandComplete, as in PostgreSQL
            // when an implicit transaction fails to commit.
            wire.drop_last_completion();
            error.encode(&mut wire.out);
            wire.ready(b'I');
        }
        Some(CommitPoint::Sync(frame)) => {
            // The primary raises the refusal inside the group: the implicit transaction
            // rolls back at the Sync, as after any error.
            raise_in_group(wire, refusal, &error).await?;
            wire.forward(&frame).await?;
        }
        Some(CommitPoint::Bind(frame)) => {
            raise_in_group(wire, refusal, &error).await?;
            // The primary now skips to the client's Sync; then the aborted block is ended,
            // so the client's session is idle as after a failed COMMIT.
            wire.forward(&frame).await?;
            loop {
                let Some(next) = wire.client_frame().await? else { return Err(SessionError::Closed) };
                let tag = next[0];
                wire.forward(&next).await?;
                if tag == b'S' {
                    break;
                }
            }
            let outcome = wire.relay_until_ready().await?;
            if outcome.status != b'I' {
                let _ = wire.own_query("ROLLBACK").await?;
            }
            wire.ready(b'I');
        }
        None => {}
    }
    Ok(())
}

/// Make the primary raise `refusal` inside the client's extended group, so the group fails as
/// after any error; when it failed already (the primary skips to the Sync, and would never
/// answer a statement of capgate's), the client gets `error` from capgate instead.
async fn raise_in_group<CR, CW, SR, SW>(
    wire: &mut Wire<'_, CR, CW, SR, SW>,
    refusal: &Refusal,
    error: &ErrorMessage,
) -> Result<(), SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    if wire.state.group_failed() {
        error.encode(&mut wire.out);
        return Ok(());
    }
    if let Err(e) = wire.own_extended(&raise_statement(refusal)).await? {
        wire.out.extend_from_slice(&e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays_read_back() {
        assert_eq!(parse_text_array("{public.a,\"public.\\\"B c\\\"\"}"), vec!["public.a".to_owned(), "public.\"B c\"".to_owned()]);
        assert_eq!(parse_text_array("{}"), Vec::<String>::new());
    }
}

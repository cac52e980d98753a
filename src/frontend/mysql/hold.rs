//! Held commands (decision 0016): the client pump stops at a COMMIT, at a statement that
//! commits implicitly (DDL, BEGIN) or at a statement that may write a sync table, waits until
//! every earlier reply has reached the client, and then looks at the status flags:
//!
//! - a COMMIT of an open transaction: the sync commit runs on the session's own primary
//!   connection, and the client's COMMIT follows only once every replica prepared;
//! - an implicit commit of an open transaction: the sync commit runs with capgate's own
//!   COMMIT, then the statement goes on (`SET autocommit = 1` commits only when autocommit
//!   was off); after DDL, the capture triggers are reconciled
//!   with the policy before the client gets the reply (a new table a rule matches is
//!   captured from its first write, a changed table's images carry its new columns);
//! - a possible sync write outside a transaction in autocommit mode: capgate runs it inside
//!   a transaction of its own (`BEGIN`; under `LOCK TABLES`, which `BEGIN` would release,
//!   `SET autocommit = 0` and back to 1 after) and coordinates that transaction; the client
//!   sees the statement's reply (outside a transaction), or the refusal;
//! - a multi-statement query run in parts (`super::parts`): after DDL the capture triggers
//!   are reconciled before the writes that follow it in the query run; a possible sync write
//!   after a statement that commits implicitly (a stored program's definition, DDL, `LOCK
//!   TABLES`, `SET autocommit = 1` …) runs, in autocommit mode, as above; the client gets the
//!   parts' replies as one (issue 15);
//! - DDL of an async or bounded table: the open transaction is committed (coordinated) as
//!   the DDL would, then capgate carries it (`super::ddl`, decision 0040);
//! - a TRUNCATE of a replicated table: the open transaction is committed (coordinated) as
//!   the TRUNCATE would, then capgate carries it (`super::truncate`, decision 0029);
//! - anything else goes on as it came.
//!
//! capgate's commands go to the primary as [`Pending::Capgate`]: the server pump hands their
//! replies back here instead of to the client. A refusal rolls the primary back and answers
//! with an ERR.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::relay::{After, Pending, PumpError, SessionState};
use super::statements::{Hold, Statements};
use super::sync::{self, Outcome, PrimaryTx};
use crate::protocol::mysql::command::Command;
use crate::protocol::mysql::replies::{ends_well, join, set_final_status};
use crate::protocol::mysql::response::parse_err;
use crate::protocol::mysql::rows::text_rows;
use crate::protocol::mysql::{com, packet, status};
use crate::store::mysql::apply::Change;
use crate::store::mysql::primary::{sync_decide, sync_delete, SYNC_READ};

/// The MySQL error code a refused COMMIT gets (ER_ERROR_DURING_COMMIT); the SQLSTATE is the
/// refusal's (`55000` a replica unavailable, `CGC01` the sites differ).
const COMMIT_REFUSED: u16 = 1180;

/// Handle a held command `payload` (a COM_QUERY or COM_STMT_EXECUTE).
pub async fn held<W>(state: &SessionState, server: &mut W, statements: &mut Statements, payload: &[u8], hold: Hold) -> Result<(), PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    // Every reply before it reaches the client first; then the status flags say whether a
    // transaction is open.
    state.wait_drained().await;
    let flags = state.lock().status;
    let in_trans = flags & status::IN_TRANS != 0;
    match hold {
        Hold::Commit if in_trans => {
            let (outcome, reply) = coordinate(state, server, statements, Commit::Client(payload)).await?;
            answer(state, outcome, reply);
        }
        Hold::Ddl => {
            if in_trans && statements.policy().has_sync() {
                let (outcome, reply) = coordinate(state, server, statements, Commit::Own).await?;
                if outcome != Outcome::Committed {
                    answer(state, outcome, reply);
                    return Ok(());
                }
            }
            let mut relay = RelayPrimary::new(state, server, statements, Commit::Own);
            let reply = relay.own(&[payload]).await.and_then(|mut r| r.pop());
            if let Some(e) = relay.failed.take() {
                return Err(e);
            }
            let reply = reply.unwrap_or_default();
            if error_of(&reply).is_none() {
                reconcile(statements).await;
            }
            answer(state, Outcome::Committed, Some(reply));
        }
        // Only `SET autocommit = 1` commits before the write, and autocommit is already on:
        // nothing commits, the write joins the client's transaction.
        Hold::Split(parts) if in_trans && flags & status::AUTOCOMMIT != 0 && parts.iter().any(|p| p.after_autocommit_on) => {
            return forward(state, server, statements, payload).await
        }
        Hold::Split(parts) => split(state, server, statements, payload, &parts, in_trans).await?,
        Hold::ImplicitCommit | Hold::AutocommitOn if in_trans && (hold == Hold::ImplicitCommit || flags & status::AUTOCOMMIT == 0) => {
            let (outcome, reply) = coordinate(state, server, statements, Commit::Own).await?;
            match outcome {
                Outcome::Committed => return forward(state, server, statements, payload).await,
                _ => answer(state, outcome, reply),
            }
        }
        Hold::Autocommit if !in_trans && flags & status::AUTOCOMMIT != 0 => {
            let reply = autocommit_write(state, server, statements, payload).await?;
            queue(state, reply);
        }
        Hold::CarryDdl(target) => {
            if in_trans && statements.policy().has_sync() {
                let (outcome, reply) = coordinate(state, server, statements, Commit::Own).await?;
                if outcome != Outcome::Committed {
                    answer(state, outcome, reply);
                    return Ok(());
                }
            }
            return super::ddl::carry(state, server, statements, payload, &target).await;
        }
        Hold::Truncate(target) => {
            if in_trans {
                let (outcome, reply) = coordinate(state, server, statements, Commit::Own).await?;
                if outcome != Outcome::Committed {
                    answer(state, outcome, reply);
                    return Ok(());
                }
            }
            return super::truncate::carry(state, server, statements, &target).await;
        }
        _ => return forward(state, server, statements, payload).await,
    }
    Ok(())
}

/// A query run in `parts` (`Hold::Split`, `super::parts`): the open transaction is
/// coordinated first (as before any statement that commits implicitly), then each part is
/// relayed as capgate's own command — the capture triggers reconciled after a part that holds
/// DDL, so a table it created or changed is captured as it now is before the next part writes
/// it — and the part that starts with a sync write runs, in autocommit mode outside a
/// transaction, as an autocommit write ([`autocommit_write`]); after a part that opened a
/// transaction or turned autocommit off, as it came. The client gets the replies as one; a
/// part that fails ends the query there, as on the server. The status flags are read again
/// before each part: `SET autocommit = 1; UPDATE <sync table> …` with autocommit off commits
/// the open transaction and then runs the UPDATE as an autocommit write.
async fn split<W>(
    state: &SessionState,
    server: &mut W,
    statements: &mut Statements,
    payload: &[u8],
    parts: &[super::parts::Part],
    in_trans: bool,
) -> Result<(), PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    if in_trans && statements.policy().has_sync() {
        let (outcome, reply) = coordinate(state, server, statements, Commit::Own).await?;
        if outcome != Outcome::Committed {
            answer(state, outcome, reply);
            return Ok(());
        }
    }
    let sql = payload.get(1..).unwrap_or_default();
    let deprecate_eof = statements.deprecate_eof();
    let mut joined: Option<Vec<u8>> = None;
    let mut from = 0;
    for part in parts {
        let end = part.end.clamp(from, sql.len());
        let command = [&[com::QUERY][..], &sql[from..end]].concat();
        from = end;
        let flags = state.lock().status;
        let reply = if let Some(target) = &part.carry {
            super::ddl::carried(state, server, statements, &command, target).await?
        } else if part.sync_write && flags & status::IN_TRANS == 0 && flags & status::AUTOCOMMIT != 0 {
            autocommit_write(state, server, statements, &command).await?
        } else {
            own_one(state, server, statements, &command).await?
        };
        let went_well = ends_well(&reply, deprecate_eof);
        joined = Some(match joined {
            None => reply,
            Some(before) => join(before, &reply, deprecate_eof),
        });
        if !went_well {
            break;
        }
        if part.ddl {
            reconcile(statements).await;
        }
    }
    queue(state, joined.unwrap_or_default());
    Ok(())
}

/// Run `payload`, a query that may write a sync table, sent outside a transaction in
/// autocommit mode, in a transaction of capgate's own, and coordinate its commit: the
/// client's reply (the query's, its status outside a transaction, or the refusal). Under
/// `LOCK TABLES` the transaction is opened with `SET autocommit = 0` — `BEGIN` would release
/// the session's table locks — and autocommit is turned back on after it.
async fn autocommit_write<W>(
    state: &SessionState,
    server: &mut W,
    statements: &mut Statements,
    payload: &[u8],
) -> Result<Vec<u8>, PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let locked = statements.locked_tables();
    let open = if locked { "SET autocommit = 0" } else { "BEGIN" };
    let mut relay = RelayPrimary::new(state, server, statements, Commit::Own);
    let replies = relay.own(&[&query(open), payload]).await;
    let failed = relay.failed.take();
    let (Some(replies), None) = (replies, failed.as_ref()) else {
        return Err(failed.unwrap_or_else(|| PumpError::Io(std::io::Error::other("the primary closed the connection"))));
    };
    let mut reply = replies.into_iter().nth(1).unwrap_or_default();
    let client = if error_of(&reply).is_some() {
        let _ = relay.own(&[&query("ROLLBACK")]).await;
        if let Some(e) = relay.failed.take() {
            return Err(e);
        }
        client_reply(Outcome::Failed, Some(reply))
    } else {
        let (outcome, commit_reply) = coordinate(state, server, statements, Commit::Own).await?;
        if outcome == Outcome::Committed {
            let autocommit = if locked { status::AUTOCOMMIT } else { 0 };
            set_final_status(&mut reply, statements.deprecate_eof(), autocommit, status::IN_TRANS);
            client_reply(outcome, Some(reply))
        } else {
            client_reply(outcome, commit_reply)
        }
    };
    if locked {
        own_one(state, server, statements, &query("SET autocommit = 1")).await?;
    }
    Ok(client)
}

/// Relay one command of capgate's own; its reply, whole.
async fn own_one<W>(state: &SessionState, server: &mut W, statements: &Statements, payload: &[u8]) -> Result<Vec<u8>, PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let mut relay = RelayPrimary::new(state, server, statements, Commit::Own);
    let reply = relay.own(&[payload]).await.and_then(|mut r| r.pop());
    match relay.failed.take() {
        Some(e) => Err(e),
        None => Ok(reply.unwrap_or_default()),
    }
}

/// After DDL: the capture triggers brought in step with the policy in force (not the one the
/// ended transaction started with: an older one would take back triggers a reload has
/// installed meanwhile). Under the session's own `LOCK TABLES`, or when the round fails (another
/// session holds a table it must change), it is left to the maintenance loop, which runs
/// rounds until one succeeds.
pub(super) async fn reconcile(statements: &Statements) {
    let shared = statements.shared();
    if statements.locked_tables() {
        // The round would wait for the locks this session holds until it gives up: the
        // maintenance loop runs it instead, once they are released.
        shared.reconcile_again();
        return;
    }
    let policy = shared.router.policy().current();
    if let Err(e) = super::setup::reconcile(&shared.config, &policy).await {
        shared.reconcile_again();
        tracing::warn!("after DDL, the capture triggers could not be brought in step with the policy: {e}; retrying in the background");
    }
}

/// Let a held command go on as it came.
async fn forward<W>(state: &SessionState, server: &mut W, statements: &Statements, payload: &[u8]) -> Result<(), PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let reply = Command::parse(payload).reply();
    state.lock().queue.push_back(Pending::Reply { tracker: statements.tracker(reply), after: After::Nothing });
    send(server, &[payload]).await
}

/// Run the sync commit; the outcome and the reply of the COMMIT that went to the primary.
pub(super) async fn coordinate<W>(
    state: &SessionState,
    server: &mut W,
    statements: &mut Statements,
    commit: Commit<'_>,
) -> Result<(Outcome, Option<Vec<u8>>), PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let Some(sync) = statements.shared().sync.as_ref() else { return Err(PumpError::Io(std::io::Error::other("no sync setup"))) };
    let (gid, site, deadline) = (sync.gid(), sync.site.clone(), sync.deadline);
    let policy = statements.policy();
    let slots = statements.slots.clone();
    let mut primary = RelayPrimary::new(state, server, statements, commit);
    let outcome = sync::commit(&mut primary, &slots, &policy, gid, &site, deadline).await;
    match primary.failed {
        Some(e) => Err(e),
        None => Ok((outcome, primary.commit_reply)),
    }
}

/// Queue the client's answer: `reply` (the primary's) unless the commit was refused.
pub(super) fn answer(state: &SessionState, outcome: Outcome, reply: Option<Vec<u8>>) {
    queue(state, client_reply(outcome, reply));
}

/// The client's answer: `reply` (the primary's) unless the commit was refused.
fn client_reply(outcome: Outcome, reply: Option<Vec<u8>>) -> Vec<u8> {
    match outcome {
        Outcome::Refused(r) => packet::err(1, (COMMIT_REFUSED, r.code), &format!("{} (hint: {})", r.message, r.hint)),
        _ => reply.unwrap_or_else(|| packet::err(1, (COMMIT_REFUSED, "08S01"), "capgate: the primary did not answer the COMMIT")),
    }
}

/// Queue `bytes` as the client's reply, in its turn.
fn queue(state: &SessionState, bytes: Vec<u8>) {
    state.push_own(bytes);
}

/// Write whole commands (each payload as one packet with sequence id 0).
async fn send<W: AsyncWrite + Unpin + ?Sized>(server: &mut W, payloads: &[&[u8]]) -> Result<(), PumpError> {
    let mut out = Vec::new();
    for p in payloads {
        packet::write(&mut out, 0, p);
    }
    server.write_all(&out).await?;
    server.flush().await?;
    Ok(())
}

/// Which COMMIT ends the transaction.
#[derive(Clone, Copy)]
pub(super) enum Commit<'a> {
    /// The client's own (its reply goes to the client).
    Client(&'a [u8]),
    /// capgate's, for a transaction it opened or must end before a statement that commits
    /// implicitly.
    Own,
}

/// The client's primary transaction, reached through the relay.
pub(super) struct RelayPrimary<'a, W: ?Sized> {
    state: &'a SessionState,
    server: &'a mut W,
    statements: &'a Statements,
    commit: Commit<'a>,
    /// The primary's reply to the COMMIT, once sent.
    commit_reply: Option<Vec<u8>>,
    /// The primary connection failed: the session ends with this.
    pub(super) failed: Option<PumpError>,
}

impl<'a, W: AsyncWrite + Unpin + Send + ?Sized> RelayPrimary<'a, W> {
    pub(super) fn new(state: &'a SessionState, server: &'a mut W, statements: &'a Statements, commit: Commit<'a>) -> Self {
        RelayPrimary { state, server, statements, commit, commit_reply: None, failed: None }
    }

    /// Send commands of capgate's own; their replies, whole, in order (None: the connection
    /// failed).
    pub(super) async fn own(&mut self, payloads: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
        let mut waits = Vec::new();
        {
            let mut flow = self.state.lock();
            for p in payloads {
                let (tx, rx) = oneshot::channel();
                flow.queue.push_back(Pending::Capgate { tracker: self.statements.tracker(Command::parse(p).reply()), reply: tx });
                waits.push(rx);
            }
        }
        if let Err(e) = send(self.server, payloads).await {
            self.failed = Some(e);
            return None;
        }
        let mut out = Vec::new();
        for w in waits {
            match w.await {
                Ok(bytes) => out.push(bytes),
                Err(_) => {
                    self.failed = Some(PumpError::Io(std::io::Error::other("the primary closed the connection")));
                    return None;
                }
            }
        }
        Some(out)
    }
}

pub(super) fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![com::QUERY];
    p.extend_from_slice(sql.as_bytes());
    p
}

/// The ERR message of a reply, if it is one.
pub(super) fn error_of(reply: &[u8]) -> Option<String> {
    reply.get(4..).and_then(parse_err).map(|e| format!("{} ({})", e.message, e.code))
}

impl<W: AsyncWrite + Unpin + Send + ?Sized> PrimaryTx for RelayPrimary<'_, W> {
    async fn read_changes(&mut self, gid: &str, origin: &str) -> Result<Vec<Change>, String> {
        let replies = self.own(&[&query(SYNC_READ)]).await.ok_or("the primary connection failed")?;
        let rows = text_rows(&replies[0], self.statements.deprecate_eof()).map_err(|e| e.to_string())?;
        let text = |v: &Option<Vec<u8>>| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        let changes = rows
            .iter()
            .map(|r| {
                let seq = text(&r[0]).and_then(|s| s.parse().ok()).ok_or("a change without seq")?;
                Ok(Change {
                    seq,
                    tbl: text(&r[1]).unwrap_or_default(),
                    op: text(&r[2]).unwrap_or_default(),
                    old: text(&r[3]),
                    new: text(&r[4]),
                })
            })
            .collect::<Result<Vec<Change>, String>>()?;
        if changes.is_empty() {
            return Ok(changes);
        }
        let mut commands: Vec<Vec<u8>> = sync_delete(&changes.iter().map(|c| c.seq).collect::<Vec<_>>()).iter().map(|d| query(d)).collect();
        commands.push(query(&sync_decide(gid, origin)));
        let refs: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
        let replies = self.own(&refs).await.ok_or("the primary connection failed")?;
        match replies.iter().find_map(|r| error_of(r)) {
            Some(e) => Err(e),
            None => Ok(changes),
        }
    }

    async fn commit(&mut self) -> Option<bool> {
        let own = query("COMMIT");
        let payload = match self.commit {
            Commit::Client(p) => p,
            Commit::Own => own.as_slice(),
        };
        // No reply: the connection failed with the COMMIT on its way (the outcome unknown).
        let mut replies = self.own(&[payload]).await?;
        let reply = replies.pop().unwrap_or_default();
        let committed = error_of(&reply).is_none();
        self.commit_reply = Some(reply);
        Some(committed)
    }

    async fn rollback(&mut self) {
        let _ = self.own(&[&query("ROLLBACK")]).await;
    }
}

/// Mark a new session's primary connection as a capgate client session (its sync changes
/// are coordinated at COMMIT); the reply payload, to check.
pub fn session_marker() -> Vec<u8> {
    query(crate::store::mysql::primary::SESSION_MARKER)
}

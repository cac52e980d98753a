//! A held COMMIT (decision 0015): the client pump stops at the client's COMMIT, waits until
//! every earlier reply has reached the client, and — when a transaction is open — runs the
//! sync commit on the session's own primary connection: capgate's statements go to the
//! primary as commands whose replies the server pump hands back here instead of to the
//! client ([`Pending::Capgate`]); the client's COMMIT follows only once every replica
//! prepared, and its reply is relayed; a refusal rolls the primary back and answers the
//! COMMIT with an ERR.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::relay::{After, Pending, PumpError, SessionState};
use super::statements::Statements;
use super::sync::{self, Outcome, PrimaryTx, PREPARE_TIMEOUT};
use crate::protocol::mysql::command::Command;
use crate::protocol::mysql::response::parse_err;
use crate::protocol::mysql::rows::text_rows;
use crate::protocol::mysql::{com, packet, status};
use crate::store::mysql::apply::Change;
use crate::store::mysql::primary::{sync_decide, sync_delete, SYNC_READ};

/// The MySQL error code a refused COMMIT gets (ER_ERROR_DURING_COMMIT); the SQLSTATE is the
/// refusal's (`55000` a replica unavailable, `CGC01` the sites differ).
const COMMIT_REFUSED: u16 = 1180;

/// Handle the client's COMMIT `payload` (a COM_QUERY or COM_STMT_EXECUTE).
pub async fn commit_point<W>(state: &SessionState, server: &mut W, statements: &mut Statements, payload: &[u8]) -> Result<(), PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    // Every reply before the COMMIT reaches the client first; then the status flags say
    // whether a transaction is open.
    loop {
        if state.lock().queue.is_empty() {
            break;
        }
        state.drained.notified().await;
    }
    let reply = Command::parse(payload).reply();
    if state.lock().status & status::IN_TRANS == 0 {
        state.lock().queue.push_back(Pending::Reply { tracker: statements.tracker(reply), after: After::Nothing });
        return send(server, &[payload]).await;
    }
    let Some(sync) = statements.shared().sync.as_ref() else { return Err(PumpError::Io(std::io::Error::other("no sync setup"))) };
    let (gid, site) = (sync.gid(), sync.site.clone());
    let policy = statements.policy();
    let slots = statements.slots.clone();
    let mut primary = RelayPrimary { state, server, statements, payload, failed: None };
    let outcome = sync::commit(&mut primary, &slots, &policy, gid, &site, PREPARE_TIMEOUT).await;
    if let Some(e) = primary.failed {
        return Err(e);
    }
    if let Outcome::Refused(r) = outcome {
        let err = packet::err(1, (COMMIT_REFUSED, r.code), &format!("{} (hint: {})", r.message, r.hint));
        state.lock().queue.push_back(Pending::Own(err));
        state.wake.notify_one();
    }
    Ok(())
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

/// The client's primary transaction, reached through the relay.
struct RelayPrimary<'a, W: ?Sized> {
    state: &'a SessionState,
    server: &'a mut W,
    statements: &'a Statements,
    /// The client's COMMIT.
    payload: &'a [u8],
    /// The primary connection failed: the session ends with this.
    failed: Option<PumpError>,
}

impl<W: AsyncWrite + Unpin + Send + ?Sized> RelayPrimary<'_, W> {
    /// Send commands of capgate's own; their replies, whole, in order (None: the connection
    /// failed).
    async fn own(&mut self, payloads: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
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

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![com::QUERY];
    p.extend_from_slice(sql.as_bytes());
    p
}

/// The ERR message of a reply, if it is one.
fn error_of(reply: &[u8]) -> Option<String> {
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

    async fn commit(&mut self) -> bool {
        let Some(mut replies) = self.own(&[self.payload]).await else { return false };
        let reply = replies.pop().unwrap_or_default();
        let committed = reply.get(4) != Some(&0xff);
        // The primary's reply to the client's COMMIT goes to the client as it came.
        self.state.lock().queue.push_back(Pending::Own(reply));
        self.state.wake.notify_one();
        committed
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
